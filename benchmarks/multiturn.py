"""Multi-turn chat with a shared system prompt: TTFT and throughput per turn, prefix cache on and off.

    python benchmarks/multiturn.py [--systems ours-on,ours-off,llama-server,genai] [--system-tokens 1000]
        [--conversations 8] [--turns 4] [--max-tokens 128] [--llama-server BIN] [--peer-python PY]
        [--plot benchmarks/results/multiturn_ttft.png] [--json OUT.json]

Every conversation starts with the same system prompt (--system-tokens tokens of the default model's
tokenizer) and a short user turn; each later turn sends the whole history (system, every user turn and
every reply so far) plus a new user turn. --conversations conversations run at once, each a closed
loop (its next turn goes when its reply is complete); replies are --max-tokens greedy tokens, EOS
ignored. Each system runs alone on the machine, one after the other:
- ours-on / ours-off: `hybridllm serve` (default model, policy auto) with enable_prefix_caching on / off,
  through its OpenAI-compatible frontend (streamed /v1/chat/completions);
- llama-server: llama.cpp's server on the default model's GGUF, --parallel = conversations, through its
  own /v1/chat/completions with cache_prompt (build: /work/shared/DESIGN.md, "Serving peers");
- genai: OpenVINO GenAI's ContinuousBatchingPipeline with enable_prefix_caching, in process (it has no
  HTTP server of its own), on an IR exported from our converted HF folder (int8 weights), fed the same
  conversations rendered with the model's chat template.
Per turn: TTFT p50 / p99 over the conversations and output tokens/s (the turn's tokens over the time
from its first request to its last reply). The last columns are ratios to ours-off in this run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

TOPICS = ["rivers", "volcanoes", "bread", "chess", "comets", "bees", "glass", "trains", "tides", "maps"]
PARAGRAPH = ("You are a careful assistant for a travel company. Answer in plain English, give short lists "
             "when they help, name the sources of numbers, and say when you are unsure. Customers ask about "
             "flights, hotels, visas, local food, museums, weather and safety. Never invent prices. ")


def system_prompt(tokenizer, n_tokens: int) -> str:
    text = PARAGRAPH * (n_tokens // 40 + 2)
    ids = tokenizer.encode(text).ids[:n_tokens]
    return tokenizer.decode(ids)


def user_turn(conv: int, turn: int) -> str:
    return f"Conversation {conv}, question {turn + 1}: what should a visitor know about {TOPICS[(conv + turn) % 10]}?"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


# -- clients -------------------------------------------------------------------


def run_openai(base_url: str, model: str, system: str, args, extra: dict) -> list[list[dict]]:
    """The conversations over a streamed OpenAI chat API; -> per conversation, per turn records."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", timeout=1800, max_retries=0)
    out: list[list[dict]] = [[] for _ in range(args.conversations)]

    def conversation(c: int):
        messages = [{"role": "system", "content": system}]
        for t in range(args.turns):
            messages.append({"role": "user", "content": user_turn(c, t)})
            t0 = time.perf_counter()
            first, text, n = None, [], 0
            stream = client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                                    temperature=0.0, stream=True, extra_body=extra,
                                                    stream_options={"include_usage": True})
            for ch in stream:
                if ch.choices and ch.choices[0].delta.content:
                    first = first or time.perf_counter()
                    text.append(ch.choices[0].delta.content)
                if getattr(ch, "usage", None):
                    n = ch.usage.completion_tokens
            end = time.perf_counter()
            out[c].append(dict(start=t0, ttft=(first or end) - t0, end=end, tokens=n or args.max_tokens))
            messages.append({"role": "assistant", "content": "".join(text)})

    threads = [threading.Thread(target=conversation, args=(c,)) for c in range(args.conversations)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); log: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    import signal
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prefix_metrics(metrics_url: str) -> dict[str, float]:
    import urllib.request
    text = urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5).read().decode()
    got: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("hybridllm_prefix_cache_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            got[name] = got.get(name, 0.0) + float(value)
    return got


def ours(system: str, args, caching: bool, work: Path):
    from _common import free_ports      # here: _common loads torch, which the peer worker does not need
    http, grpc, metrics, port = free_ports(4)
    log = work / f"serve-{'on' if caching else 'off'}.out"
    cmd = [str(Path(sys.executable).parent / "hybridllm"), "serve", "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", str(metrics), "--openai-port", str(port), "--workdir", str(work / f"serve-{caching}"),
           "--log-file", str(work / f"triton-{caching}.log"), "--max-num-seqs", str(args.conversations),
           "--enable-prefix-caching" if caching else "--no-enable-prefix-caching"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 900, log)
        run_openai(f"http://127.0.0.1:{port}/v1", "hybrid_llm", "Warm up.", _warm(args), {"ignore_eos": True})
        res = run_openai(f"http://127.0.0.1:{port}/v1", "hybrid_llm", system, args, {"ignore_eos": True})
        info = {k.split("{")[0]: v for k, v in prefix_metrics(f"127.0.0.1:{metrics}").items()}
        return res, info
    finally:
        stop(proc)


def llama_server(system: str, args, work: Path):
    from _common import free_ports
    from hybridllm.models.default import default_gguf
    (port,) = free_ports(1)
    log = work / "llama-server.out"
    ctx = args.conversations * (args.system_tokens + args.turns * (args.max_tokens + 40) + 256)
    cmd = [args.llama_server, "-m", str(default_gguf()), "--host", "127.0.0.1", "--port", str(port), "-t",
           str(os.cpu_count()), "-np", str(args.conversations), "-c", str(ctx), "-cb"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 300, log)
        extra = {"ignore_eos": True, "cache_prompt": True}
        run_openai(f"http://127.0.0.1:{port}/v1", "m", "Warm up.", _warm(args), extra)
        return run_openai(f"http://127.0.0.1:{port}/v1", "m", system, args, extra), {}
    finally:
        stop(proc)


def _warm(args):
    return argparse.Namespace(conversations=1, turns=1, max_tokens=4)


def genai(system: str, args, work: Path):
    """Runs this file's --genai-worker under the peer venv's Python; it prints JSON records."""
    from hybridllm import default_model
    spec = dict(model=str(default_model()), system=system, conversations=args.conversations, turns=args.turns,
                max_tokens=args.max_tokens, ir=str(Path(args.genai_ir)))
    res = subprocess.run([args.peer_python, __file__, "--genai-worker", json.dumps(spec)], capture_output=True,
                         text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1]), {}


def genai_worker(spec: dict) -> None:
    """In the peer venv: export the IR once, then the same closed-loop conversations on the CB pipeline."""
    import openvino_genai as og
    from transformers import AutoTokenizer

    ir = Path(spec["ir"])
    if not (ir / "openvino_model.xml").exists():
        subprocess.run(["optimum-cli", "export", "openvino", "--model", spec["model"], "--task",
                        "text-generation-with-past", "--weight-format", "int8", str(ir)], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=sys.stderr,
                       executable=str(Path(sys.executable).parent / "optimum-cli"))
    tok = AutoTokenizer.from_pretrained(spec["model"])
    sc = og.SchedulerConfig()
    sc.enable_prefix_caching = True
    sc.max_num_seqs = spec["conversations"]
    sc.max_num_batched_tokens = 2048
    sc.cache_size = 1
    pipe = og.ContinuousBatchingPipeline(str(ir), sc, "CPU")
    cfg = og.GenerationConfig()
    cfg.max_new_tokens = spec["max_tokens"]
    cfg.ignore_eos = True
    warm = og.GenerationConfig()
    warm.max_new_tokens = 4
    h = pipe.add_request(10**6, "Warm up.", warm)           # compile before the clock starts, as the servers do
    while h.get_status() != og.GenerationStatus.FINISHED:
        pipe.step()
    n, turns = spec["conversations"], spec["turns"]
    history = [[{"role": "system", "content": spec["system"]}] for _ in range(n)]
    out = [[] for _ in range(n)]
    live = {}

    def submit(c):
        t = len(out[c])
        history[c].append({"role": "user", "content": user_turn(c, t)})
        prompt = tok.apply_chat_template(history[c], tokenize=False, add_generation_prompt=True)
        live[c] = (pipe.add_request(c * 1000 + t, prompt, cfg), time.perf_counter(), None, [])

    for c in range(n):
        submit(c)
    while live:
        pipe.step()
        now = time.perf_counter()
        for c, (h, t0, first, ids) in list(live.items()):
            if h.can_read():
                for o in h.read().values():
                    ids.extend(o.generated_ids)
                if ids and first is None:
                    first = now
                live[c] = (h, t0, first, ids)
            if h.get_status() == og.GenerationStatus.FINISHED:
                out[c].append(dict(start=t0, ttft=(first or now) - t0, end=now, tokens=len(ids)))
                history[c].append({"role": "assistant", "content": tok.decode(ids, skip_special_tokens=True)})
                del live[c]
                if len(out[c]) < turns:
                    submit(c)
    print(json.dumps(out))


# -- report --------------------------------------------------------------------


def per_turn(res: list[list[dict]], turns: int) -> list[dict]:
    rows = []
    for t in range(turns):
        recs = [conv[t] for conv in res if len(conv) > t]
        span = max(r["end"] for r in recs) - min(r["start"] for r in recs)
        rows.append(dict(p50=statistics.median(r["ttft"] for r in recs), p99=pct([r["ttft"] for r in recs], 0.99),
                         tps=sum(r["tokens"] for r in recs) / span))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default="ours-on,ours-off")
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--llama-server", default="/tmp/peers24/src/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server",
                    help="llama.cpp's server binary (build: /work/shared/DESIGN.md, 'Serving peers')")
    ap.add_argument("--peer-python", default="/tmp/peers24/gvenv/bin/python",
                    help="a Python with openvino-genai 2026.4.1 and optimum-intel 2.2.0 (see benchmarks/peer_venv.sh)")
    ap.add_argument("--genai-ir", default=os.path.expanduser("~/.cache/hybridllm/peers/smollm2-135m-ov-int8"))
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--genai-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.genai_worker:
        return genai_worker(json.loads(args.genai_worker))

    from tokenizers import Tokenizer

    from _common import machine, table
    from hybridllm import default_model
    tok = Tokenizer.from_file(str(default_model() / "tokenizer.json"))
    system = system_prompt(tok, args.system_tokens)
    work = Path(tempfile.mkdtemp(prefix="multiturn-"))
    runners = {"ours-on": lambda: ours(system, args, True, work), "ours-off": lambda: ours(system, args, False, work),
               "llama-server": lambda: llama_server(system, args, work), "genai": lambda: genai(system, args, work)}
    results, infos = {}, {}
    for name in args.systems.split(","):
        t = time.perf_counter()
        try:
            res, info = runners[name]()
        except Exception as e:          # a missing peer must not lose the other rows
            print(f"{name}: failed: {e}", file=sys.stderr)
            continue
        results[name], infos[name] = per_turn(res, args.turns), info
        print(f"{name}: done in {time.perf_counter() - t:.0f} s {info}", file=sys.stderr, flush=True)
    print(f"machine: {machine()}; {args.conversations} conversations x {args.turns} turns, system prompt "
          f"{args.system_tokens} tokens, {args.max_tokens} new tokens per turn; {time.strftime('%Y-%m-%d')}")
    peer = results.get("ours-off")
    rows = []
    for name, turns in results.items():
        for t, r in enumerate(turns):
            ratio = (f"{r['p50'] / peer[t]['p50']:.2f}x", f"{r['tps'] / peer[t]['tps']:.2f}x") if peer else ("-", "-")
            rows.append([name, t + 1, f"{r['p50']:.3f}", f"{r['p99']:.3f}", f"{r['tps']:.1f}", *ratio])
    print(table(["system", "turn", "TTFT p50 s", "TTFT p99 s", "out tok/s", "p50 / ours-off", "tok/s / ours-off"],
                rows))
    for name, info in infos.items():
        if info:
            print(f"{name}: " + ", ".join(f"{k}={v:g}" for k, v in sorted(info.items())))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results=results, infos=infos, args=vars(args)), indent=1))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, turns in results.items():
            ax.plot(range(1, len(turns) + 1), [r["p50"] for r in turns], marker="o", label=name)
        ax.set(xlabel="turn", ylabel="TTFT p50 (s)", yscale="log",
               title=f"{args.conversations} conversations, {args.system_tokens}-token system prompt")
        ax.set_xticks(range(1, args.turns + 1))
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
