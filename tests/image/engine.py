"""Builds and runs this project's images with podman (or a docker whose daemon answers), as a user
would on this kind of machine: a local Debian base when no registry is reachable, the CPU torch
wheel from a wheel folder, the host's CA bundle mounted read-only at build time (never baked in)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CPU_BASE = "docker.io/library/debian:bookworm-slim"     # Dockerfile.cpu's FROM debian:bookworm-slim
CPU_TAG = "localhost/hybridllm-cpu:test"
TORCH = "torch==2.13.0"


def engine() -> list[str] | None:
    """The container CLI to use, or None when neither podman nor a running docker is here."""
    if shutil.which("podman"):
        return ["podman"]
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return ["docker"]
    return None


def engine_env(workdir: Path) -> dict:
    """podman: runc (crun refuses a hybrid cgroup layout) and no default ulimits (a sandbox may not
    raise RLIMIT_NOFILE/NPROC). Our own containers.conf, so the host's config is left alone."""
    conf = workdir / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n')
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def run(cmd: list[str], env: dict, timeout: float, check: bool = True, log: Path | None = None):
    out = open(log, "ab") if log else subprocess.PIPE
    try:
        p = subprocess.run(cmd, env=env, timeout=timeout, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log:
            out.close()
    if check and p.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:] if log else (p.stdout or b"").decode(errors="replace")[-4000:]
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n{tail}")
    return p


def ensure_cpu_base(cli: list[str], env: dict, workdir: Path) -> None:
    """debian:bookworm-slim from a registry if one answers, else made here with debootstrap (minbase)."""
    if run(cli + ["image", "inspect", CPU_BASE], env, 30, check=False).returncode == 0:
        return
    if run(cli + ["pull", CPU_BASE], env, 120, check=False, log=workdir / "pull.log").returncode == 0:
        return
    if not shutil.which("debootstrap"):
        raise AssertionError(f"no registry gave {CPU_BASE} and debootstrap is not installed (apt-get install debootstrap)")
    rootfs = workdir / "rootfs"
    run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"], env, 600,
        log=workdir / "debootstrap.log")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imp = subprocess.run(cli + ["import", "-", CPU_BASE], stdin=tar.stdout, env=env, capture_output=True, timeout=300)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    assert imp.returncode == 0, imp.stderr.decode(errors="replace")


def cpu_torch_wheels(workdir: Path) -> Path:
    """A folder holding the CPU torch wheel: the pip find-links folder that has it, else pip download."""
    links = os.environ.get("PIP_FIND_LINKS", "").split() + ["/opt/wheels"]
    for folder in links:
        if glob.glob(os.path.join(folder, "torch-2.13.0+cpu-*.whl")):
            return Path(folder)
    dest = workdir / "wheels"
    subprocess.run(["python3", "-m", "pip", "download", "--no-deps", "-d", str(dest), "torch==2.13.0+cpu",
                    "--extra-index-url", "https://download.pytorch.org/whl/cpu"], check=True, timeout=600)
    return dest


def build_cpu_image(cli: list[str], env: dict, workdir: Path) -> None:
    """The README's build command plus the two read-only mounts (podman only: docker build has no -v).
    Layers stay in the engine's store, so a rebuild after a source change redoes only the last steps."""
    cmd = cli + ["build", "-f", "docker/Dockerfile.cpu", "-t", CPU_TAG]
    if cli == ["podman"]:
        cmd += ["--network=host", "-v", f"{cpu_torch_wheels(workdir)}:/wheels:ro"]
        cert = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
        if cert and Path(cert).is_file():
            cmd += ["-v", f"{Path(cert).resolve()}:/certs/ca.crt:ro"]
    run(cmd + [str(ROOT)], {**env, "BUILDAH_LAYERS": "true"}, 900, log=workdir / "build.log")
