"""End-to-end latency: POST -> committed row, at a steady rate, through `chalice local` and the
local queue, with the real worker (`read_queue.py`) in its own process.

A watcher polls the database every 5 ms (a primary-key lookup of one new event per POST), so a
latency is the time from just before the POST was sent until its events were visible in a
committed transaction, give or take 5 ms. All events of a POST land in the same transaction.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLL_SECONDS = 0.005


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(  # noqa: S310 - our own local endpoint
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - our own local endpoint
        return resp.status


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def measure_latency(
    events: list[dict[str, Any]], workdir: Path, rate: float = 1000.0, per_post: int = 100
) -> dict[str, Any]:
    queue_path, db_path = workdir / "latency-queue.db", workdir / "latency.db"
    for path in (queue_path, db_path):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    port = _free_port()
    env = {**os.environ, "QUEUE_URL": f"local:{queue_path}", "DB_PATH": str(db_path), "PYTHONUNBUFFERED": "1"}
    env.pop("FIREHOSE_TOKEN", None)
    bin_dir = Path(sys.executable).parent
    log = (workdir / "latency-chalice.log").open("wb")
    endpoint = subprocess.Popen(
        [str(bin_dir / "chalice"), "local", "--stage", "local", "--no-autoreload", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "read_queue.py"), "--quiet", "--wait-seconds", "20"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/events"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or endpoint.poll() is not None:
                    raise RuntimeError("chalice local did not start; see latency-chalice.log") from None
                time.sleep(0.1)
        while not db_path.exists():
            time.sleep(0.05)
        # One probe key per POST: a new standard event (not a duplicate, not an update).
        posts: list[tuple[bytes, str]] = []
        seen: set[str] = set()
        for start in range(0, len(events), per_post):
            chunk = events[start : start + per_post]
            probe = next(
                e["tune_event_id"] for e in chunk if "adjust_action" not in e and e["tune_event_id"] not in seen
            )
            seen.update(e["tune_event_id"] for e in chunk)
            posts.append((json.dumps({"events": chunk}).encode(), probe))
        sent_at: dict[str, float] = {}
        landed: dict[str, float] = {}
        done = threading.Event()

        def watch() -> None:
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
            while not done.is_set() or len(landed) < len(sent_at):
                for key in [k for k in list(sent_at) if k not in landed]:
                    try:
                        if db.execute("SELECT 1 FROM events WHERE tune_event_id = ?", (key,)).fetchone():
                            landed[key] = time.perf_counter()
                    except sqlite3.OperationalError:
                        pass
                if done.is_set() and time.perf_counter() - last_post[0] > 30:
                    break
                time.sleep(POLL_SECONDS)
            db.close()

        last_post = [time.perf_counter()]
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        interval = per_post / rate
        began = time.perf_counter()
        statuses = []
        for i, (body, probe) in enumerate(posts):
            target = began + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at[probe] = time.perf_counter()
            statuses.append(_post(url, body))
            last_post[0] = time.perf_counter()
        achieved = len(events) / (time.perf_counter() - began)
        done.set()
        watcher.join(60)
        latencies = [landed[k] - sent_at[k] for k in sent_at if k in landed]
        return {
            "posts": len(posts),
            "events": len(events),
            "per_post": per_post,
            "target_rate": rate,
            "achieved_rate": achieved,
            "ok_posts": sum(1 for s in statuses if s == 202),
            "landed_posts": len(latencies),
            "p50": _percentile(latencies, 50) if latencies else float("nan"),
            "p99": _percentile(latencies, 99) if latencies else float("nan"),
            "max": max(latencies) if latencies else float("nan"),
        }
    finally:
        _stop(worker)
        _stop(endpoint)
        log.close()
