#!/usr/bin/env bash
# aiperf's multi-turn mode against our OpenAI frontend, prefix cache on and then off: `hybridllm serve`
# (default model, policy auto) for each, then `aiperf profile --endpoint-type chat --streaming` with
# CONVERSATIONS sessions of TURNS turns at that concurrency, a SYSTEM-token shared system prompt, short
# user turns and 128 output tokens (EOS ignored); each turn carries the whole history (aiperf keeps it).
# Prints aiperf's tables per run; artifacts under $OUT (default /tmp/aiperf-multiturn).
#
#   bash benchmarks/aiperf_multiturn.sh [AIPERF_BIN] [CONVERSATIONS] [TURNS] [SYSTEM]
#   AIPERF_BIN defaults to /tmp/aiperf/bin/aiperf; make it with:
#     python3 -m venv /tmp/aiperf && /tmp/aiperf/bin/pip install aiperf==0.13.0
set -euo pipefail
AIPERF=${1:-/tmp/aiperf/bin/aiperf}
CONVERSATIONS=${2:-8}
TURNS=${3:-4}
SYSTEM=${4:-1000}
OUT=${OUT:-/tmp/aiperf-multiturn}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
HYBRIDLLM=$ROOT/.venv/bin/hybridllm
MODEL=$("$PY" -c 'from hybridllm import default_model; print(default_model())')
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for cache in enable no-enable; do
    ports=($("$PY" -c 'import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])'))
    mkdir -p "$OUT/$cache"
    "$HYBRIDLLM" serve --http-port "${ports[0]}" --grpc-port "${ports[1]}" --metrics-port "${ports[2]}" \
        --openai-port "${ports[3]}" --workdir "$OUT/$cache/serve" --log-file "$OUT/$cache/tritonserver.log" \
        --max-num-seqs "$CONVERSATIONS" "--$cache-prefix-caching" > "$OUT/$cache/serve.out" 2>&1 &
    SERVE=$!
    trap 'kill -INT $SERVE 2>/dev/null; wait $SERVE 2>/dev/null || true' EXIT
    for _ in $(seq 900); do
        grep -q "Ctrl-C stops" "$OUT/$cache/serve.out" 2>/dev/null && break
        kill -0 $SERVE 2>/dev/null || { cat "$OUT/$cache/serve.out"; exit 1; }
        sleep 1
    done
    echo "== --$cache-prefix-caching: $CONVERSATIONS conversations x $TURNS turns, system prompt $SYSTEM tokens =="
    "$AIPERF" profile --model hybrid_llm --url "http://127.0.0.1:${ports[3]}" --endpoint-type chat --streaming \
        --tokenizer "$MODEL" --concurrency "$CONVERSATIONS" --conversation-num "$CONVERSATIONS" \
        --conversation-turn-mean "$TURNS" --conversation-turn-stddev 0 --shared-system-prompt-length "$SYSTEM" \
        --synthetic-input-tokens-mean 32 --synthetic-input-tokens-stddev 0 --output-tokens-mean 128 \
        --output-tokens-stddev 0 --extra-inputs ignore_eos:true --random-seed 1 \
        --output-artifact-dir "$OUT/$cache/aiperf" --no-auto-plot 2>&1 | tail -30
    curl -s "http://127.0.0.1:${ports[2]}/metrics" | grep -E '^hybridllm_prefix_cache_(queries|hits)_total' || true
    kill -INT $SERVE; wait $SERVE 2>/dev/null || true
    trap - EXIT
done
