"""Two (or N) `hybridllm serve` replicas on loopback behind nginx least_conn.

    python deploy/local/lbpair.py --model default --replicas 2 --grpc-port 8001 --http-port 8000

Each replica is a `hybridllm serve` process with its own ports, work folder and shared-memory prefix
(`--shm-region-prefix-name`); nginx comes from Debian's package, unpacked into a cache folder without
installing anything (`apt-get download` + `dpkg -x`). The tests drive the same pieces
(tests/serving/test_lb_pair.py).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
NGINX_VERSION = "1.22.1-9+deb12u9"      # Debian 12's; the pin the tests ran with


class SetupError(RuntimeError):
    pass


def _apt_download(dest: Path, spec: str) -> Path | None:
    r = subprocess.run(["apt-get", "download", spec], cwd=dest, capture_output=True, text=True)
    debs = sorted(dest.glob("nginx_*.deb"))
    return debs[-1] if r.returncode == 0 and debs else None


def ensure_nginx(cache: Path) -> Path:
    """<cache>/nginx-<version>/usr/sbin/nginx, from Debian's nginx package (downloaded once, unpacked,
    not installed). Raises SetupError saying why when the package cannot be had."""
    binary = cache / f"nginx-{NGINX_VERSION}" / "usr" / "sbin" / "nginx"
    if binary.is_file():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise SetupError("nginx: apt-get and dpkg are needed to fetch Debian's nginx package")
    work = cache / f".download-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        deb = _apt_download(work, f"nginx={NGINX_VERSION}")
        if deb is None:  # no package lists yet (a fresh machine), or the pin left the archive
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            deb = _apt_download(work, f"nginx={NGINX_VERSION}")
        if deb is None:
            deb = _apt_download(work, "nginx")
            if deb is not None:
                print(f"lbpair: nginx {NGINX_VERSION} is gone from the archive; using {deb.name}", file=sys.stderr)
        if deb is None:
            raise SetupError("nginx: `apt-get download nginx` failed (is the Debian archive reachable?)")
        unpacked = work / "root"
        subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
        final = binary.parents[2]
        if not final.exists():
            unpacked.rename(final)  # atomic: a concurrent set-up either sees nothing or all of it
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def render_nginx_conf(prefix: Path, grpc_backends: list[int], http_backends: list[int], *, host: str = "127.0.0.1",
                      grpc_port: int, http_port: int) -> str:
    def servers(ports):
        return "\n".join(f"        server {host}:{p} max_fails=1 fail_timeout=10s;" for p in ports)
    return Template((HERE / "nginx.conf.template").read_text()).substitute(
        prefix=prefix, host=host, grpc_port=grpc_port, http_port=http_port,
        grpc_servers=servers(grpc_backends), http_servers=servers(http_backends))


@dataclass
class Nginx:
    binary: Path
    prefix: Path
    conf_text: str
    proc: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "logs"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.conf_text)
        check = subprocess.run([str(self.binary), "-t", "-p", str(self.prefix), "-c", str(conf)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise SetupError(f"nginx rejected its config: {check.stderr.strip()}")
        self.proc = subprocess.Popen([str(self.binary), "-p", str(self.prefix), "-c", str(conf)],
                                     stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)   # graceful: finish open requests' bookkeeping, exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Replica:
    """One `hybridllm serve` process (and its tritonserver, whose pid it prints)."""
    name: str
    http_port: int
    grpc_port: int
    metrics_port: int
    workdir: Path
    serve_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    triton_pid: int | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> "Replica":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "hybridllm.cli", "serve", "--openai-port", "0",
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), "--workdir", str(self.workdir),
               "--log-file", str(self.workdir / "tritonserver.log"),
               # Distinct per server on one host, and recognisable in /dev/shm.
               "--shm-region-prefix-name", f"hybridllm_{self.name}_{os.getpid()}_", *self.serve_args]
        self._out = open(self.workdir / "serve.out", "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"replica {self.name} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            m = re.search(r"tritonserver pid (\d+)", self.output())
            if m:
                self.triton_pid = int(m.group(1))
                return
            time.sleep(0.25)
        raise SetupError(f"replica {self.name} not ready after {timeout:.0f} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        path = self.workdir / "serve.out"
        return path.read_text(errors="replace") if path.is_file() else ""

    def crash(self) -> None:
        """SIGKILL to tritonserver's process group (server and stubs), as a crash or an OOM kill would."""
        if self.triton_pid:
            try:
                os.killpg(self.triton_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # serve stops tritonserver and cleans its shm
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.crash()
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode if self.proc else None


def free_ports(n: int) -> list[int]:
    import socket
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--grpc-port", type=int, default=8001, help="nginx's gRPC port")
    ap.add_argument("--http-port", type=int, default=8000, help="nginx's HTTP port")
    ap.add_argument("--workdir", default="/tmp/hybridllm-lbpair")
    ap.add_argument("--nginx-cache", default=str(Path.home() / ".cache" / "hybridllm" / "nginx"))
    ap.add_argument("--ready-timeout", type=float, default=600)
    args, serve_args = ap.parse_known_args(argv)   # the rest goes to every `hybridllm serve`
    root = Path(args.workdir)
    binary = ensure_nginx(Path(args.nginx_cache))
    replicas = []
    for i in range(args.replicas):
        http, grpc, metrics = free_ports(3)
        replicas.append(Replica(f"r{i}", http, grpc, metrics, root / f"r{i}", serve_args).start())
    nginx = None
    try:
        for r in replicas:
            r.wait_ready(args.ready_timeout)
            print(f"lbpair: replica {r.name}: gRPC :{r.grpc_port} HTTP :{r.http_port} metrics {r.metrics_url}")
        conf = render_nginx_conf(root / "nginx", [r.grpc_port for r in replicas], [r.http_port for r in replicas],
                                 grpc_port=args.grpc_port, http_port=args.http_port)
        nginx = Nginx(binary, root / "nginx", conf).start()
        print(f"lbpair: nginx least_conn on gRPC 127.0.0.1:{args.grpc_port}, HTTP 127.0.0.1:{args.http_port}; "
              "Ctrl-C stops everything", flush=True)
        nginx.proc.wait()
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if nginx:
            nginx.stop()
        for r in replicas:
            r.stop()


if __name__ == "__main__":
    sys.exit(main())
