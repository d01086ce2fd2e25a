"""Runs the real tritonserver from the nvidia-pytriton wheel over a model repository.

Start-up is guarded both ways tritonserver can go wrong: a model that fails to load makes the server
exit (we report its log), and a stub that cannot start makes it hang (we give up after a timeout).
The server gets its own process group, so stopping it by PID also reaches its stub processes,
and its Python-backend shared memory uses a prefix of ours, so stop() can prove none is left.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from .repository import build_backend_dir, find_triton, server_env

SHM_DIR = Path("/dev/shm")


class ServerError(RuntimeError):
    pass


class TritonServer:
    def __init__(self, repository: Path, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, workdir: Path | None = None,
                 log_file: Path | None = None, extra_args: tuple[str, ...] = (), shm_prefix: str | None = None):
        self.repository = Path(repository)
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.workdir = Path(workdir) if workdir else self.repository.parent
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = tuple(extra_args)
        # Unique per server: /dev/shm regions of this server are exactly the ones with this prefix (servers
        # sharing a host must not share one: the backend would attach to another server's regions).
        self.shm_prefix = shm_prefix or f"hybridllm_{uuid.uuid4().hex[:12]}_"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.killed = False                      # stop() had to SIGKILL
        self._stopped = False
        self.leaked_at_exit: list[Path] = []     # shm regions found after the server exited

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def local_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self.local_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.local_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.local_host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        install = find_triton()
        backends = build_backend_dir(self.workdir / "backends", install)
        return [
            str(install.server),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=20",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def start(self) -> "TritonServer":
        if self.proc is not None:
            raise ServerError("server already started")
        cmd = self.command()
        if self.log_file:
            self._log = open(self.log_file, "ab")
        # Its own process group (so stop() reaches the stubs too) but our session: with the kernel's
        # autogroup scheduling a new session would get its own CPU share, unlike the rest of us.
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        self.proc = subprocess.Popen(cmd, env=server_env(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT if self._log else None, **group)
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> None:
        """Returns once every model is ready; else stops the server and raises with the log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop(timeout=10)
                raise ServerError(f"tritonserver exited with code {code} while loading models{self._tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop(timeout=10)  # a hung load rarely honours SIGTERM; do not wait long for it
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s (a model stub may hang){self._tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the server's PID (graceful: models finalize, shm is released), then SIGKILL
        to its process group if it does not exit; finally removes any shm region it left."""
        if self.proc is None or self._stopped:
            return self.proc.returncode if self.proc else None
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
        _kill_group(self.proc.pid)  # stubs, if any are left
        if self.proc.poll() is None:
            self.proc.wait(10)
        # What a graceful exit left behind (tests assert it is nothing); then make sure of it.
        self.leaked_at_exit = self.leaked_shm()
        for region in self.leaked_at_exit:
            region.unlink(missing_ok=True)
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def leaked_shm(self) -> list[Path]:
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*")) if SHM_DIR.is_dir() else []

    def _tail(self, n: int = 2000) -> str:
        """The models' load errors (they come early in the log) and the end of the log."""
        if not self.log_file or not self.log_file.is_file():
            return ""
        text = self.log_file.read_bytes().decode("utf-8", "replace")
        failed = [line[:800] for line in text.splitlines() if "failed to load '" in line]
        head = "".join(f"\n{line}" for line in failed)
        return f"{head}\n--- {self.log_file} (tail) ---\n{text[-n:]}"

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_group(pgid: int, wait_s: float = 5.0) -> None:
    """SIGKILLs what is left of the group and waits until it is gone (orphans are reaped by init)."""
    deadline = time.monotonic() + wait_s
    try:
        os.killpg(pgid, signal.SIGKILL)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        pass


def _port_free(host: str, port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def serve(config, limits, *, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, workdir: Path | None = None, ready_timeout: float = 600.0,
          log_file: Path | None = None, out=None, openai_port: int = 9000, instance_count: int = 1,
          shm_region_prefix_name: str | None = None) -> int:
    """`hybridllm serve`: build the repository, run tritonserver in the foreground until Ctrl-C/SIGTERM,
    with the OpenAI-compatible frontend on openai_port (0: none) in a thread of this process."""
    import dataclasses

    from ...models.default import cache_dir, resolve_model
    from .repository import MODEL_NAME, package_root, write_model

    out = out or sys.stdout
    if openai_port and not _port_free(host, openai_port):
        print(f"hybridllm serve: error: openai_port {openai_port} on {host} is in use; pass --openai-port with "
              "a free port, or 0 for no OpenAI frontend", file=sys.stderr, flush=True)
        return 1
    # Convert the model here, with a progress bar, not silently inside the server's load.
    model_path = resolve_model(config.model)
    config = dataclasses.replace(config, model=str(model_path))
    root = Path(workdir) if workdir else cache_dir() / "serve" / f"port-{http_port}"
    repo = root / "model_repository"
    try:
        write_model(repo, MODEL_NAME, config, limits, instance_count=instance_count, source_root=package_root())
    except ValueError as e:
        print(f"hybridllm serve: error: {e}", file=sys.stderr, flush=True)
        return 1
    server = TritonServer(repo, host=host, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, workdir=root, log_file=log_file,
                          shm_prefix=shm_region_prefix_name)

    def _interrupt(signum, frame):
        raise KeyboardInterrupt
    # Both stop us, also where SIGINT was ignored when we started (e.g. `cmd &` in a script).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    frontend = thread = None
    try:
        server.start()
        server.wait_ready(ready_timeout)
        openai_line = ""
        if openai_port:
            import threading

            from ..openai.frontend import run_frontend
            frontend = run_frontend(server.grpc_url, model_path, host=host, port=openai_port,
                                    metrics_url=server.metrics_url)
            thread = threading.Thread(target=frontend.run, name="openai-frontend", daemon=True)
            thread.start()
            openai_line = (f"  OpenAI   http://{server.local_host}:{openai_port}/v1   "
                           f"(chat, completions, models; GET /health)\n")
        print(f"hybridllm: serving {MODEL_NAME!r} ({model_path}, policy {config.policy})\n"
              f"  HTTP     http://{server.http_url}   POST /v2/models/{MODEL_NAME}/generate_stream\n"
              f"  gRPC     {server.grpc_url}   hybridllm generate --url {server.grpc_url} --stream \"Hello\"\n"
              f"  metrics  {server.metrics_url}\n{openai_line}"
              f"Ctrl-C stops the server (tritonserver pid {server.pid}).", file=out, flush=True)
        code = server.proc.wait()
        print(f"hybridllm: tritonserver exited with code {code}", file=out, flush=True)
        return code or 1  # it only exits by itself on error
    except KeyboardInterrupt:
        print("hybridllm: stopping tritonserver", file=out, flush=True)
        return 0
    except ServerError as e:
        print(f"hybridllm serve: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if frontend is not None:
            frontend.should_exit = True
            thread.join(timeout=10)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        left = server.leaked_shm()
        if left:  # stop() removes them; this would be a bug worth shouting about
            print(f"hybridllm: shared memory left behind: {[str(p) for p in left]}", file=sys.stderr)
