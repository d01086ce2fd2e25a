#!/usr/bin/env bash
# What a GPU session runs on a lent machine (see benchmarks/RESULTS.md, "GPU"). Those machines
# reach no registry, so OpenVINO travels as wheels in .whl/ (cp312 manylinux; see README, GPU).
#
#   bash benchmarks/gpu_run.sh evidence [--dry-run]  # issue 27 in one command, <= 9 min: tests, quick profile,
#                                       # decode step table, NEO online, FlexInfer vs offloading (benchmarks/evidence.py)
#   bash benchmarks/gpu_run.sh test     # CUDA tests: graphs on/off parity, kernels, NEO's stream, offload, partition
#   bash benchmarks/gpu_run.sh step     # decode step time (Llama-3-8B shape, bf16) vs weight+KV read at HBM speed
#   bash benchmarks/gpu_run.sh neo      # NEO's pipelined step on 4 layers: t(A+B) against max(t(A), t(B))
#   bash benchmarks/gpu_run.sh gemv     # batch-1 linear layers: our Triton GEMV vs cuBLAS, as read bandwidth
#   bash benchmarks/gpu_run.sh flex     # one layer's paged decode: Triton kernel vs compiled flex_attention
#   bash benchmarks/gpu_run.sh profile  # random Llama-3-8B (bf16) + `hybridllm profile` for it
#   bash benchmarks/gpu_run.sh online [online.py real args...]  # NEO vs gpu_only, latency/throughput PNG
#   bash benchmarks/gpu_run.sh agree [online.py agree args...]  # NEO's step choice vs measured step times
#   bash benchmarks/gpu_run.sh auto     # auto's profile on first use (timed) + the per-step estimator grid
#
# Results go to $OUT (the device tool brings that folder back).
set -uo pipefail
OUT=${OUT:-/tmp/hybridllm-gpu-out}
MODEL=${MODEL:-/tmp/llama-3-8b}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    # Once per machine: later stages of the same command find it installed.
    [ -d /tmp/site/openvino ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/backend:$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
stage=${1:-test}
shift || true

model() {
    # A recipe: each engine draws the weights on the GPU when it loads them; nothing is written.
    [ -f "$MODEL/config.json" ] || python3 benchmarks/random_model.py llama-3-8b "$MODEL" --dtype bfloat16 --in-memory
}

case "$stage" in
evidence)
    # Random weights drawn on the GPU at each engine's load (a recipe folder), never written to disk.
    python3 benchmarks/evidence.py --out "$OUT" "$@" 2>&1 | tee "$OUT/evidence.log"
    exit "${PIPESTATUS[0]}"
    ;;
test)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400 >> "$OUT/gpu.txt"
    tests=("$@")
    [ ${#tests[@]} -gt 0 ] || tests=(tests/cuda tests/system/test_tiny_parity.py
        tests/unit/test_host_attention.py
        tests/unit/test_host_attention_paths.py tests/unit/test_kv.py tests/unit/test_neo_scheduler.py
        tests/unit/test_step_planner.py tests/unit/test_layers.py)
    python3 -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$OUT/test.log" | tail -40
    ;;
step)
    python3 benchmarks/gpu_step.py --out "$OUT/step.md" "$@" 2>&1 | tee "$OUT/step.log"
    ;;
gemv)
    python3 benchmarks/gemv.py --out "$OUT/gemv.md" "$@" 2>&1 | tee "$OUT/gemv.log"
    ;;
flex)
    python3 benchmarks/flex_paged.py --out "$OUT/flex.md" "$@" 2>&1 | tee "$OUT/flex.log"
    ;;
neo)
    python3 benchmarks/neo_step.py --out "$OUT/neo_step.md" "$@" 2>&1 | tee "$OUT/neo_step.log"
    ;;
profile)
    model
    python3 -c "from hybridllm.cli import main; raise SystemExit(main())" profile --model "$MODEL" \
        --dtype bfloat16 --out "$OUT/profile-llama3-8b-bf16.json" -q 2>&1 | tail -5
    ;;
online)
    model
    python3 benchmarks/online.py real --model "$MODEL" --dtype bfloat16 "$@" 2>&1 | tee "$OUT/online.log"
    ;;
agree)
    model
    python3 benchmarks/online.py agree --model "$MODEL" --dtype bfloat16 "$@" 2>&1 | tee "$OUT/agree.log"
    ;;
auto)
    model
    export HYBRIDLLM_CACHE=${HYBRIDLLM_CACHE:-/tmp/hybridllm-cache}
    python3 -c "
import logging, sys, time
logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
from hybridllm import LLM
t = time.perf_counter(); LLM(model=sys.argv[1], dtype='bfloat16', host_kv_bytes=8 << 30)
print(f'first start (profile measured on first use): {time.perf_counter() - t:.1f} s')
" "$MODEL" 2>&1 | tee "$OUT/auto-start.log" | tail -25
    python3 benchmarks/estimator_accuracy.py --per-step --model "$MODEL" --dtype bfloat16 \
        --policies gpu_only,partition,cpu_only "$@" 2>&1 | tee "$OUT/per-step.log" | tail -30
    ;;
*)
    echo "unknown stage $stage: evidence, test, step, neo, gemv, flex, profile, online, agree or auto" >&2
    exit 2
    ;;
esac
