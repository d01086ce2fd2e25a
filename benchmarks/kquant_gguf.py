"""K-quant GGUFs of the default model, made by llama.cpp's own quantizer, run from their codes.

    python benchmarks/kquant_gguf.py --llama-bin LLAMA_CPP/build/bin [--types Q4_K_M,Q8_0] [--tokens 64]

LLAMA_CPP/build/bin holds llama.cpp's `llama-quantize` and `llama-bench`, built from the llama-cpp-python
sdist's vendor/llama.cpp (`cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build
--target llama-quantize llama-bench`). For each file type, llama-quantize requantizes the default GGUF
(Q4_1; llama.cpp dequantizes it and applies its own Q4_K_M mix), then, each in a fresh process of ours:
- the tensor types the converter kept as codes (quantization.json), and RSS after load under cpu_only
  with weight_dtype=auto (codes kept, not floats);
- greedy agreement with HF transformers fp32 on the converter's dequantized weights: 8 prompts x 16 tokens;
- decode tok/s at batch 1 and 8 (ours) against llama-bench's text generation (batch 1, 2 threads) on
  the same file, in the same run.
The files go to the hybridllm cache (`kquant/`), never into the repository.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--llama-bin", required="--child" not in sys.argv, help="folder with llama-quantize and llama-bench")
p.add_argument("--types", default="Q4_K_M,Q8_0")
p.add_argument("--tokens", type=int, default=64, help="new tokens per timed decode")
p.add_argument("--child", nargs=2, metavar=("FOLDER", "TOKENS"), help=argparse.SUPPRESS)
args = p.parse_args()

PROMPT = "Once upon a time, there was a little"


def rss_mib() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


def child(folder: str, tokens: int) -> None:
    """Ours, in a fresh process: RSS after load, greedy tokens, decode rates."""
    import ctypes
    import gc

    from hybridllm import LLM, SamplingParams
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers.default_prompts import PROMPTS
    base = rss_mib()
    llm = LLM(folder, policy="cpu_only", weight_dtype="auto", host_kv_bytes=1 << 26)   # 64 MiB: RSS is the weights
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    loaded = rss_mib()
    prec = llm.engine.runtime.executors["cpu_only"].linear.options.precision
    greedy = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    got = [list(o.token_ids) for o in llm.generate(PROMPTS[:8], greedy, use_tqdm=False)]
    rates = {}
    for batch in (1, 8):
        def run(n):
            t = time.perf_counter()
            llm.generate([PROMPT] * batch, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True),
                         use_tqdm=False)
            return time.perf_counter() - t
        t1, tn = run(1), run(tokens)
        rates[batch] = batch * (tokens - 1) / max(tn - t1, 1e-9)
    print(json.dumps({"rss_base": base, "rss_loaded": loaded, "precision": prec.label, "greedy": got,
                      "tok_s": rates}))


def llama_bench(gguf: Path, tokens: int) -> float:
    """llama.cpp's own text-generation rate (tok/s) on the file: batch 1, 2 threads."""
    out = subprocess.run([str(Path(args.llama_bin) / "llama-bench"), "-m", str(gguf), "-p", "0", "-n", str(tokens),
                          "-t", "2", "-o", "json"], check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def last_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def hf_greedy_all(folder: Path) -> list[list[int]]:
    import torch
    import transformers
    from tokenizers import Tokenizer
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers.default_prompts import PROMPTS
    from tests.helpers.tiny_models import hf_greedy
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return [hf_greedy(hf, tok.encode(q).ids, 16) for q in PROMPTS[:8]]


def main() -> None:
    from hybridllm.converters import convert
    from hybridllm.models.default import default_gguf
    from hybridllm.models.quantized import QuantizedCheckpoint
    from hybridllm.utils import cache_root
    root = cache_root() / "kquant"
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [t for t in args.types.split(",") if t]:
        gguf = root / f"SmolLM2-135M-Instruct.{name}.gguf"
        if not gguf.is_file():
            t = time.perf_counter()
            subprocess.run([str(Path(args.llama_bin) / "llama-quantize"), "--allow-requantize", str(default_gguf()),
                            str(gguf), name, "2"], check=True, capture_output=True)
            print(f"{name}: quantized by llama.cpp in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        folder = root / f"hf-{name}"
        if not (folder / "config.json").is_file():
            convert(gguf, folder, progress=False)
        kept = QuantizedCheckpoint.open(folder)
        ours = last_json([sys.executable, __file__, "--child", str(folder), str(args.tokens)])
        peer = {"tok_s": llama_bench(gguf, args.tokens)}
        want = hf_greedy_all(folder)
        same = sum(g == w for g, w in zip(ours["greedy"], want))
        first = sum(g[0] == w[0] for g, w in zip(ours["greedy"], want))
        rows.append((name, kept.describe() if kept else "none", ours["precision"], gguf.stat().st_size >> 20,
                     ours["rss_loaded"] - ours["rss_base"], f"{same}/8, first {first}/8", ours["tok_s"]["1"],
                     ours["tok_s"]["8"], peer["tok_s"]))
    print("| file | kept codes | ours: weights | GGUF MiB | RSS after load - before, MiB | greedy vs HF fp32 "
          "(16 tok) | ours b1 tok/s | ours b8 tok/s | llama.cpp b1 tok/s | ours b1 / llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.1f} | {r[7]:.1f} | {r[8]:.1f} | "
              f"{r[6] / r[8]:.2f} |")


if __name__ == "__main__":
    if args.child:
        child(args.child[0], int(args.child[1]))
    else:
        main()
