"""The long-context batch: ours in process against OpenVINO GenAI's ContinuousBatchingPipeline (the engine
inside OVMS), the same prompts, the same max_num_seqs and max_num_batched_tokens, no prefix caching.

    python benchmarks/cb_generate.py --peer-python /tmp/peers/bin/python [--prompts 24] [--prompt-tokens 1000]
                                     [--new-tokens 256] [--max-num-seqs 8] [--max-num-batched-tokens 2048]
                                     [--weight-format int4]

`--peer-python`: a venv with openvino-genai and optimum-intel at our openvino version (benchmarks/peer_venv.sh).
The prompts are distinct slices of benchmarks/data/perplexity_text.txt, `--prompt-tokens` tokens each by the
default model's tokenizer (plus a numbered first line), sent as the same token ids to both sides. Each request
makes exactly `--new-tokens` tokens (EOS ignored, greedy). Ours: `LLM(model="default")` with no options but the
two limits and the cache off; GenAI: its defaults (u8 KV on the CPU, int8 activations) on an IR that
optimum-cli exports from the converted HF folder at `--weight-format` (int4 with groups of 32, as the
GGUF's). Output tok/s = all generated tokens / wall time from submit to the last token; each runner runs
alone (ours first, then GenAI in its own process), best of `--rounds`, with the read bandwidth at start and end.
Text check: every request made its tokens on both sides, and how many prompts continue with the same first
token (the weights are quantized differently, Q4_1 codes against GenAI's int4 rounding, so later tokens part).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, read_bandwidth_gbs, table  # noqa: E402

TEXT = Path(__file__).parent / "data" / "perplexity_text.txt"

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--peer-python", default="/tmp/peers/bin/python")
p.add_argument("--prompts", type=int, default=24)
p.add_argument("--prompt-tokens", type=int, default=1000)
p.add_argument("--new-tokens", type=int, default=256)
p.add_argument("--max-num-seqs", type=int, default=8)
p.add_argument("--max-num-batched-tokens", type=int, default=2048)
p.add_argument("--weight-format", default="int4", choices=("int4", "int8"))
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--genai-worker", help=argparse.SUPPRESS)
args = p.parse_args()


def prompts(tokenizer_json: Path) -> list[list[int]]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = tok.encode(TEXT.read_text(encoding="utf-8")).ids
    n, k = args.prompts, args.prompt_tokens
    stride = max(1, (len(ids) - k) // max(n - 1, 1))
    if len(ids) < k:
        raise SystemExit(f"{TEXT}: {len(ids)} tokens, fewer than --prompt-tokens {k}")
    # Distinct starting points (wrapping around the text), and a numbered first line so no two share a prefix.
    out = []
    for i in range(n):
        start = (i * stride) % max(len(ids) - k, 1)
        out.append(tok.encode(f"Passage {i + 1}.\n").ids + ids[start:start + k])
    return out


def genai_worker(spec: dict) -> None:
    """In the peer venv: export the IR once, then every request on the CB pipeline with its defaults."""
    import openvino_genai as og
    ir = Path(spec["ir"])
    if not (ir / "openvino_model.xml").exists():
        group = ["--group-size", "32"] if spec["format"] == "int4" else []
        subprocess.run([str(Path(sys.executable).parent / "optimum-cli"), "export", "openvino", "--model",
                        spec["model"], "--task", "text-generation-with-past", "--weight-format", spec["format"],
                        *group, str(ir)], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=sys.stderr)
    sc = og.SchedulerConfig()
    sc.max_num_seqs, sc.max_num_batched_tokens = spec["max_num_seqs"], spec["max_num_batched_tokens"]
    sc.enable_prefix_caching = False
    sc.cache_size = 2                                       # GB of KV: room for every running sequence
    pipe = og.ContinuousBatchingPipeline(str(ir), sc, "CPU")
    cfg = og.GenerationConfig()
    cfg.max_new_tokens = cfg.min_new_tokens = spec["new_tokens"]
    cfg.ignore_eos, cfg.do_sample = True, False
    warm = og.GenerationConfig()
    warm.max_new_tokens = 4
    import numpy as np
    import openvino as ov
    ids = [ov.Tensor(np.array([p], dtype=np.int64)) for p in spec["prompts"]]     # the same token ids as ours
    pipe.generate(ids[:1], [warm])                          # compile before the clock, as ours is at start-up
    runs = []
    for _ in range(spec["rounds"]):
        t = time.perf_counter()
        res = pipe.generate(ids, [cfg] * len(ids))
        wall = time.perf_counter() - t
        runs.append({"wall": wall, "tokens": [len(r.m_generation_ids[0]) for r in res],
                     "first": [list(r.m_generation_ids[0][:1]) for r in res]})
    print(json.dumps(runs))


def ours(texts: list[str]) -> list[dict]:
    from hybridllm import LLM, SamplingParams
    llm = LLM(model="default", max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
              enable_prefix_caching=False)
    sp = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    llm.generate(texts[:1], SamplingParams(max_tokens=4), use_tqdm=False)
    runs = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        outs = llm.generate(texts, sp, use_tqdm=False)
        wall = time.perf_counter() - t
        runs.append({"wall": wall, "tokens": [len(o.token_ids) for o in outs],
                     "first": [list(o.token_ids[:1]) for o in outs]})
    return runs


def main() -> None:
    from hybridllm import default_model
    from hybridllm.utils import cache_root
    folder = default_model()
    texts = prompts(folder / "tokenizer.json")
    bw0 = read_bandwidth_gbs()
    ir = f"smollm2-135m-ov-{args.weight_format}" + ("-g32" if args.weight_format == "int4" else "")
    spec = {"ir": str(cache_root() / "peers" / ir),
            "model": str(folder), "format": args.weight_format, "prompts": texts, "new_tokens": args.new_tokens,
            "max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
            "rounds": args.rounds}
    mine = ours(texts)
    res = subprocess.run([args.peer_python, __file__, "--genai-worker", "-"], input=json.dumps(spec), text=True,
                         capture_output=True)
    if res.returncode:
        raise SystemExit(f"GenAI worker failed:\n{res.stderr[-3000:]}")
    theirs = json.loads(res.stdout.strip().splitlines()[-1])
    bw1 = read_bandwidth_gbs()
    want = args.new_tokens * len(texts)
    for name, runs in (("ours", mine), ("GenAI", theirs)):
        bad = [r["tokens"] for r in runs if sum(r["tokens"]) != want]
        if bad:
            raise SystemExit(f"{name} did not make {args.new_tokens} tokens for every request: {bad[0]}")
    best = {n: min(r["wall"] for r in runs) for n, runs in (("ours", mine), ("GenAI", theirs))}
    same = sum(a[:1] == b[:1] for a, b in zip(mine[0]["first"], theirs[0]["first"]))
    rows = [["hybridllm LLM(model='default') (GGUF Q4_1 codes, auto)", f"{want / best['ours']:.1f}",
             f"{best['GenAI'] / best['ours']:.2f}"],
            [f"OpenVINO GenAI ContinuousBatchingPipeline ({args.weight_format} IR, its defaults)",
             f"{want / best['GenAI']:.1f}", "1.00"]]
    print(f"machine: {machine()}; read bandwidth {bw0:.1f} GB/s at start, {bw1:.1f} at end")
    print(f"{len(texts)} prompts x {args.prompt_tokens} tokens, {args.new_tokens} new tokens each, max_num_seqs "
          f"{args.max_num_seqs}, max_num_batched_tokens {args.max_num_batched_tokens}, no prefix caching; best of "
          f"{args.rounds}")
    print(f"text check: every request made {args.new_tokens} tokens on both sides; {same}/{len(texts)} prompts "
          f"continue with the same first token\n")
    print(table(["runner", "output tok/s", "x GenAI"], rows))


if __name__ == "__main__":
    if args.genai_worker:
        genai_worker(json.loads(sys.stdin.read()))
    else:
        main()
