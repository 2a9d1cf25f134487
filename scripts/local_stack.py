"""Start `chalice local` and a worker as real processes, for the demo, `make run` and tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    endpoint: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes] | None

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
        request = urllib.request.Request(
            f"{self.url}/events",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop_worker(self, timeout: float = 30) -> int:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGTERM)
        return self.worker.wait(timeout)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chalice local exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"chalice local did not answer on {url} within {timeout} s")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextmanager
def local_stack(
    env: dict[str, str],
    log_dir: Path,
    port: int | None = None,
    with_worker: bool = True,
    worker_args: tuple[str, ...] = ("--wait-seconds", "1"),
    stage: str | None = "local",
) -> Iterator[Stack]:
    """`chalice local` (own process group, no autoreload) plus a worker, both stopped on exit.

    Stage "local" never carries a deployed stage's settings, so the ones given here (or .env) apply
    even once stage dev holds a queue URL; `stage=None` runs `chalice local` as typed, on stage dev."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with open(log_dir / "chalice-local.log", "wb") as chalice_log, open(log_dir / "worker.log", "wb") as worker_log:
        endpoint = subprocess.Popen(
            [
                str(BIN / "chalice"),
                "local",
                *(["--stage", stage] if stage else []),
                "--no-autoreload",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=full_env,
            stdout=chalice_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = None
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, endpoint)
            if with_worker:
                worker = subprocess.Popen(
                    [sys.executable, str(ROOT / "read_queue.py"), *worker_args],
                    cwd=ROOT,
                    env=full_env,
                    stdout=worker_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            yield Stack(url, endpoint, worker)
        finally:
            if worker is not None:
                _stop_group(worker)
            _stop_group(endpoint)
