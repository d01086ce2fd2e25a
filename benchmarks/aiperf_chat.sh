#!/usr/bin/env bash
# aiperf against our OpenAI-compatible frontend: `hybridllm serve` (default model, policy auto) with the
# frontend on a free port, then `aiperf profile --endpoint-type chat --streaming` at concurrency 1 and 16
# with aiperf's own synthetic requests (its prompts, its lengths). Prints aiperf's tables; artifacts go
# under $OUT (default /tmp/aiperf-runs). The tokenizer is our converted folder (a local path: aiperf
# loads it without the hub; with HF_HUB_OFFLINE=1 it would look for a hub cache instead).
#
#   bash benchmarks/aiperf_chat.sh [AIPERF_BIN] [REQUESTS_PER_LEVEL]
#   AIPERF_BIN defaults to /tmp/aiperf/bin/aiperf; make it with:
#     python3 -m venv /tmp/aiperf && /tmp/aiperf/bin/pip install aiperf==0.13.0
set -euo pipefail
AIPERF=${1:-/tmp/aiperf/bin/aiperf}
REQUESTS=${2:-64}
OUT=${OUT:-/tmp/aiperf-runs}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
HYBRIDLLM=$ROOT/.venv/bin/hybridllm
ports=($("$PY" -c 'import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])'))
MODEL=$("$PY" -c 'from hybridllm import default_model; print(default_model())')
mkdir -p "$OUT"
"$HYBRIDLLM" serve --http-port "${ports[0]}" --grpc-port "${ports[1]}" --metrics-port "${ports[2]}" \
    --openai-port "${ports[3]}" --workdir "$OUT/serve" --log-file "$OUT/tritonserver.log" > "$OUT/serve.out" 2>&1 &
SERVE=$!
trap 'kill -INT $SERVE 2>/dev/null; wait $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    grep -q "Ctrl-C stops" "$OUT/serve.out" 2>/dev/null && break
    kill -0 $SERVE 2>/dev/null || { cat "$OUT/serve.out"; exit 1; }
    sleep 1
done
URL=http://127.0.0.1:${ports[3]}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; server: $URL"
for c in 1 16; do
    echo "== concurrency $c, $REQUESTS requests =="
    "$AIPERF" profile --model hybrid_llm --url "$URL" --endpoint-type chat --streaming \
        --tokenizer "$MODEL" --concurrency "$c" --request-count "$REQUESTS" --warmup-request-count 2 \
        --output-artifact-dir "$OUT/c$c" --no-auto-plot 2>&1 | tail -40
done
