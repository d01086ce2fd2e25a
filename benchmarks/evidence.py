"""The seeds' headline results on a lent GPU in one command (issue 27), or its CPU dry run.

    bash benchmarks/gpu_run.sh evidence [--dry-run] [--budget-s 530] [--only neo,flex]
    python benchmarks/evidence.py --out DIR [--dry-run]

Stages, in order, each a subprocess under its own time limit (a stage's unused seconds pass to the
next; one that fails or times out leaves its log and whatever rows it printed, and the rest still run):

  tests    the CUDA tests that guard what is measured (graphs on/off parity, the GEMV, NEO, offload)
  profile  the quick first-use profile of the model's shape, host KV in the engine's default format,
           plus NEO's pipelining probe (NEO places requests by it)
  step     decode step time at batch 1/16/64/128 against the HBM read measured in the same run
  neo_step NEO's pipelined step on 4 layers: B (host decodes) against A (device work) per layer
  neo      online.py real: NEO against gpu_only with the device KV capped, latency-vs-throughput plot
  flex     flex_offload.py: auto (FlexInfer's per-phase plan) against forced gpu_offload and cpu_only

The model is a random-weight recipe (models/random_weights.py): the weights are drawn on the GPU when
each engine loads, never written. Everything lands in --out: a log and a markdown table per stage, and
evidence.md, which collects them with each stage's status and time. --dry-run runs every stage on a
tiny random model on the CPU with small sizes (about a minute); tests/system/test_evidence_dry_run.py
runs it in CI, so a typo or a wrong flag fails there, not on a lent GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Setup:
    shape: str
    dtype: str
    device: str | None                    # None: cuda when present
    tests: tuple[str, ...]                # pytest arguments
    step: tuple[str, ...]                 # gpu_step.py arguments
    neo_step: tuple[str, ...]             # neo_step.py arguments
    neo: tuple[str, ...]                  # online.py real arguments (model, profile, out added)
    flex: tuple[str, ...]                 # flex_offload.py arguments
    budgets: dict[str, int] = field(default_factory=dict)      # seconds per stage


GPU = Setup(
    "llama-3-8b", "bfloat16", None,
    tests=("tests/cuda", "tests/unit/test_random_weights.py"),
    step=("--batches", "1,16,64,128", "--context", "1024", "--modes", "graphs-torch,graphs-triton,graphs-triton-gemv"),
    neo_step=("--layers", "4", "--context", "1024", "--cases", "8x8,32x16,64x32"),
    # 1 GB of device KV holds 7.6k tokens of Llama-3-8B (128 KiB each): ~10 requests of 500 + 50-400 tokens,
    # so gpu_only's batch is bound by KV far below max_num_seqs (NEO's memory-bound regime) while the 15 GB
    # of weights fit. Rates: 'auto', around gpu_only's saturation priced by the profile.
    neo=("--device-kv-gb", "1", "--host-kv-gb", "20", "--requests", "50", "--input-len", "500",
         "--out-lo", "50", "--out-hi", "400", "--max-num-seqs", "256"),
    flex=("--batches", "1,8", "--input-len", "512", "--output-len", "32", "--device-fraction", "0.5"),
    budgets={"tests": 60, "profile": 75, "step": 70, "neo_step": 25, "neo": 160, "flex": 130})

DRY = Setup(
    "tiny", "float32", "cpu",
    tests=("--collect-only", "-q", "tests/cuda"),
    step=("--device", "cpu", "--batches", "1,4", "--context", "64", "--steps", "3", "--modes",
          "eager-torch,graphs-torch"),
    neo_step=("--layers", "2", "--context", "64", "--cases", "2x2,4x2"),
    neo=("--device-blocks", "12", "--host-kv-gb", "0.02", "--requests", "6", "--input-len", "24",
         "--out-lo", "4", "--out-hi", "12", "--max-num-seqs", "16"),
    flex=("--batches", "1,2", "--input-len", "32", "--output-len", "4", "--device-fraction", "0.5",
          "--host-kv-gb", "0.02"),
    budgets={"tests": 60, "profile": 120, "step": 60, "neo_step": 60, "neo": 120, "flex": 120})

STAGES = ("tests", "profile", "step", "neo_step", "neo", "flex")


def stage_commands(s: Setup, out: Path, model: Path) -> dict[str, list[str]]:
    py, prof = sys.executable, out / "profile.json"
    dev = ["--device", s.device] if s.device else []
    return {
        "tests": [py, "-m", "pytest", "-p", "no:cacheprovider", *s.tests],
        "profile": [py, str(HERE / "evidence.py"), "_profile", "--model", str(model), "--dtype", s.dtype,
                    "--out", str(prof), *dev, *(["--dry-grid"] if s is DRY else [])],
        "step": [py, str(HERE / "gpu_step.py"), "--shape", s.shape, "--dtype", s.dtype, *s.step,
                 *(["--profile", str(prof)] if prof.is_file() else []), "--out", str(out / "step.md")],
        "neo_step": [py, str(HERE / "neo_step.py"), "--shape", s.shape, *s.neo_step, "--out", str(out / "neo_step.md")],
        "neo": [py, str(HERE / "online.py"), "real", "--model", str(model), "--dtype", s.dtype, *dev, *s.neo,
                *(["--profile", str(prof)] if prof.is_file() else ["--rates", "2,4,8"]),
                "--plot", str(out / "neo.png"), "--out", str(out / "neo.md")],
        "flex": [py, str(HERE / "flex_offload.py"), "--model", str(model), "--dtype", s.dtype, *dev, *s.flex,
                 "--profile", str(prof), "--out", str(out / "flex.md")],
    }


def run_stage(name: str, cmd: list[str], limit: float, out: Path) -> tuple[str, float]:
    """Runs cmd with its output streamed to the terminal and to out/<name>.log -> (status, seconds)."""
    t = time.perf_counter()
    print(f"\n=== {name} (limit {limit:.0f} s): {' '.join(cmd)}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                env=env, start_new_session=True)

        def copy():                                  # a stage's rows appear as it prints them
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                log.flush()

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)      # the stage and anything it started
            proc.wait()
            status = f"timed out after {limit:.0f} s"
        reader.join(timeout=5)
    dt = time.perf_counter() - t
    print(f"=== {name}: {status} in {dt:.0f} s", flush=True)
    return status, dt


def profile_stage(args) -> int:
    """The quick first-use profile (what `auto` measures on first start), with the host KV in the format
    the engine gives NEO by default, saved to --out; prints what the planner then predicts."""
    import torch
    from hybridllm.config import EngineConfig
    from hybridllm.dtypes import KV_OF_MODEL
    from hybridllm.models.config import ModelConfig
    from hybridllm.policy import BatchShape, ModelShape, Planner, format_plan
    from hybridllm.profiling.measure import Grid, measure
    from hybridllm.profiling.measure_neo import pipeline_overhead
    from hybridllm.profiling.store import save_profile
    from hybridllm.runtime.cpu.host_precision import host_precision
    from hybridllm.runtime.spec import host_kv_precision
    mc = ModelConfig.from_folder(args.model)
    precision = host_precision("auto", Path(args.model))
    config = EngineConfig(model=args.model, policy="neo", dtype=args.dtype)
    host_kv = host_kv_precision(config, precision, False)
    t = time.perf_counter()
    # The dry run's tiny matrices would be copied thousands of times to read them cold: a few points only.
    grid = Grid(gemm_tokens=(1, 16), decode_seqs=(1, 4), decode_total_tokens=(64, 512), prefill_tokens=(16, 64),
                prefill_context=(16, 64)) if args.dry_grid else None
    prof = measure(mc, args.dtype, args.device, progress=False, quick=True, host_linear=precision, host_kv=(host_kv,),
                   grid=grid)
    # NEO places requests by this profile: the quick grid skips its pipelining probe, so it runs here.
    t_neo = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = pipeline_overhead(mc, prof, args.dtype, device, host_kv)
    prof = dataclasses.replace(prof, extra={**prof.extra, "host_handoff_s": pipe})
    print(f"NEO pipelining beyond the tables: {1e3 * pipe:.3f} ms per layer (probe {time.perf_counter() - t_neo:.0f} s)")
    save_profile(prof, args.out)
    print(f"quick profile in {time.perf_counter() - t:.0f} s -> {args.out}: {prof.device_name}; host KV {host_kv}; "
          f"host weights {precision.label}; host read {prof.host_memory_bandwidth / 1e9:.1f} GB/s, h2d pinned "
          f"{prof.h2d_pinned / 1e9:.1f} GB/s, d2h pinned {prof.d2h_pinned / 1e9:.1f} GB/s; torch {torch.__version__}")
    shape = ModelShape.from_config(mc, args.dtype)
    plan = Planner(shape, prof).plan(BatchShape(1, 512, 32, KV_OF_MODEL[args.dtype]))
    print("\nplanner on this profile, batch 1, input 512, output 32, all device memory:\n" + format_plan(plan))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hybridllm-gpu-out"))
    ap.add_argument("--dry-run", action="store_true", help="a tiny random model on the CPU, every stage")
    ap.add_argument("--budget-s", type=float, default=None, help="wall time for all stages (default: their sum)")
    ap.add_argument("--only", default=",".join(STAGES), help="comma-separated stages to run")
    ap.add_argument("--model-dir", default=None, help="where the random-weight recipe is written (a few KB)")
    args = ap.parse_args()
    setup = DRY if args.dry_run else GPU
    only = args.only.split(",")
    bad = [s for s in only if s not in STAGES]
    if bad:
        ap.error(f"--only: {bad[0]!r} is not one of {', '.join(STAGES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from random_model import make
    recipe = Path(args.model_dir or Path(tempfile.gettempdir()) / f"hybridllm-random-{setup.shape}")
    model = make(setup.shape, recipe, setup.dtype, in_memory=True)
    t0 = time.perf_counter()
    budget = args.budget_s or sum(setup.budgets[s] for s in only)
    planned, results = 0.0, []
    for name in only:
        planned += setup.budgets[name]
        spent = time.perf_counter() - t0
        left = budget - spent
        if left < 5:
            results.append((name, "not run: the budget was spent", 0.0))
            continue
        # The stage's share plus what earlier stages left unused, never past the whole budget.
        limit = min(left, planned - spent)
        cmd = stage_commands(setup, out, model)[name]
        status, dt = run_stage(name, cmd, max(limit, 5.0), out)
        results.append((name, status, dt))
    report(out, setup, results, args.dry_run, time.perf_counter() - t0)
    return 0 if all(r[1] == "ok" for r in results) else 1


def report(out: Path, setup: Setup, results, dry: bool, total: float) -> None:
    """evidence.md: the stages' status and time, then each stage's table."""
    from _common import machine
    lines = [f"# evidence {'(dry run) ' if dry else ''}— {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             "", f"machine: {machine()}; model: random {setup.shape} ({setup.dtype}), drawn in memory; "
             f"command: `bash benchmarks/gpu_run.sh evidence{' --dry-run' if dry else ''}`; {total:.0f} s in all", "",
             "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {n} | {s} | {dt:.0f} |" for n, s, dt in results]
    for name, what in (("step", "step.md"), ("neo_step", "neo_step.md"), ("neo", "neo.md"), ("flex", "flex.md")):
        f = out / what
        lines += ["", f"## {name}", "", f.read_text().strip() if f.is_file() else "(no table: see the stage's log)"]
    tail = (out / "tests.log").read_text().strip().splitlines()[-3:] if (out / "tests.log").is_file() else []
    lines += ["", "## tests", "", *tail]
    prof = (out / "profile.log")
    lines += ["", "## profile", "", "```", prof.read_text().strip() if prof.is_file() else "(none)", "```"]
    (out / "evidence.md").write_text("\n".join(lines) + "\n")
    print(f"\n{out / 'evidence.md'} written:\n" + "\n".join(lines[:6 + len(results)]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_profile":
        ap = argparse.ArgumentParser()
        ap.add_argument("_profile")
        ap.add_argument("--model", required=True)
        ap.add_argument("--dtype", required=True)
        ap.add_argument("--device", default=None)
        ap.add_argument("--out", required=True)
        ap.add_argument("--dry-grid", action="store_true")
        raise SystemExit(profile_stage(ap.parse_args()))
    raise SystemExit(main())
