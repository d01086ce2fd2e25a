#!/bin/sh
# The build steps both images share (docker/Dockerfile: GPU, docker/Dockerfile.cpu: CPU).
# Each Dockerfile RUNs one step per layer, so a source change rebuilds only the project and model layers.
#   steps.sh system          python3 + venv at /opt/venv
#   steps.sh torch cpu|cuda  the one step that differs: the CPU wheel (from /wheels if mounted) or PyPI's CUDA build
#   steps.sh deps            the pinned dependencies and serve extras read from pyproject.toml (no source yet)
#   steps.sh project         this package, no deps (they are the layer before)
#   steps.sh model           converts the default model into $HYBRIDLLM_CACHE, at build time, not at first start
# TLS: a build may mount a CA bundle read-only at /certs (podman build -v DIR:/certs:ro); it is used, never copied.
set -eu
VENV=/opt/venv
PIP="$VENV/bin/pip install --no-cache-dir --disable-pip-version-check"
for ca in /certs/ca-certificates.crt /certs/ca.crt; do
    if [ -f "$ca" ]; then export PIP_CERT="$ca"; break; fi
done

case "${1:?usage: steps.sh system|torch|deps|project|model}" in
system)
    if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends python3 python3-venv
    fi
    # The Python backend's stub links libpython3.X.so (slim Debian ships python3 without it).
    lib=libpython$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if ! ldconfig -p | grep -q "$lib.so.1.0"; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends "$lib"
    fi
    rm -rf /var/lib/apt/lists/*
    python3 -m venv "$VENV"
    # The NGC base runs its own tritonserver with the system python3 (the Helm chart does): let it see the venv.
    if [ -d /opt/tritonserver ]; then
        site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
        mkdir -p "$site"
        "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/hybridllm-venv.pth"
    fi
    ;;
torch)
    # pyproject pins torch==2.13.0; PyPI's wheel for it is the CUDA build, the CPU one is elsewhere.
    case "${2:?torch cpu|cuda}" in
    # +cpu names the CPU build exactly; its own dependencies come from PyPI.
    cpu) if ls /wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
             $PIP --find-links /wheels torch==2.13.0+cpu
         else
             $PIP --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu
         fi ;;
    cuda) $PIP torch==2.13.0 ;;
    *) echo "steps.sh torch: expected cpu or cuda, got '$2'" >&2; exit 2 ;;
    esac
    ;;
deps)
    # The exact pins of [project].dependencies and the serve extra, so this layer waits on pyproject.toml only.
    "$VENV/bin/python" - /opt/hybridllm/pyproject.toml > /tmp/requirements.txt <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def block(name):
    m = re.search(rf"^{name} = \[(.*?)^\]", text, re.S | re.M)
    if not m:
        sys.exit(f"pyproject.toml: no '{name} = [' list")
    return re.findall(r'^\s*"([^"]+)"', m.group(1), re.M)
print("\n".join(block("dependencies") + block("serve")))
PY
    cat /tmp/requirements.txt
    $PIP -r /tmp/requirements.txt
    rm /tmp/requirements.txt
    ;;
project)
    $PIP --no-deps /opt/hybridllm
    rm -rf /opt/hybridllm/build
    "$VENV/bin/hybridllm" --help >/dev/null
    ;;
model)
    # The cache key holds the GGUF's mtime in ns; image layers keep whole seconds, so round it first
    # (else the running container would not find this conversion and convert again at start).
    "$VENV/bin/python" - <<'PY'
import os
from hybridllm.models.default import default_gguf, default_model
path = default_gguf()
s = os.stat(path).st_mtime_ns // 10**9 * 10**9
os.utime(path, ns=(s, s))
print(default_model(progress=False))
PY
    ;;
*)
    echo "steps.sh: unknown step '$1'" >&2; exit 2 ;;
esac
