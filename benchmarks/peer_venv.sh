#!/usr/bin/env bash
# The peers of benchmarks/cpu_generate.py in a venv of their own: OpenVINO GenAI (with optimum-intel to
# export IRs from our HF folder) and llama.cpp (llama-cpp-python, compiled here for this CPU).
# Needs only the package registries. Then:
#   python benchmarks/cpu_generate.py --peer-python VENV_DIR/bin/python
#
#   bash benchmarks/peer_venv.sh [VENV_DIR]        (default /tmp/peers)
set -euo pipefail
VENV=${1:-/tmp/peers}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import openvino_genai, llama_cpp' 2>/dev/null; then
    echo "$VENV already has openvino_genai and llama_cpp"
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# torch first, pinned to the CPU wheel: any other torch request pulls a CUDA build of several GB.
"$VENV/bin/pip" install -q torch==2.13.0
# openvino matches ours (the PagedAttention op is private API, and the rows compare one plugin).
# torch==2.13.0 again here: optimum-intel requires torchvision, and without it pip takes the newest
# torchvision, which pins torch==2.14.1 and so swaps our CPU torch for the CUDA build.
"$VENV/bin/pip" install -q torch==2.13.0 openvino==2026.4.1 openvino-genai==2026.4.1.0 \
    openvino-tokenizers==2026.4.1.0 optimum-intel==2.2.0
"$VENV/bin/pip" uninstall -y -q torchvision 2>/dev/null || true
# llama.cpp compiles for this CPU (several minutes on 2 cores).
CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
    "$VENV/bin/pip" install -q llama-cpp-python==0.3.36
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for p in ("torch", "openvino", "openvino-genai", "optimum-intel", "llama_cpp_python"):
    print(f"{p}=={md.version(p)}")
PY
echo "peers ready: python benchmarks/cpu_generate.py --peer-python $VENV/bin/python"
