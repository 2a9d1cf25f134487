"""Tools for the crash, fault, poison and security suites (issue 5).

Everything here drives the real programs: `read_queue.py` and `chalice local` run as child
processes, SQS is moto over real HTTP, and faults are injected at the HTTP or file-system
level. Expectations are computed from the generated events themselves, independently of the
code under test (a key is the event's `tune_event_id`; an update is an event whose
`adjust_action` is 2 or "update").
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import http.client
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from chalicelib.codec import dump_event, encode_envelope
from tests.invariants import Delete, Handout, ProxyLedger

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CHALICE = str(Path(sys.executable).parent / "chalice")

# Secrets planted in the environment of the processes under test; no output may carry them.
PLANTED_TOKEN = "tok-9f8e7d6c5b4a-PLANTED"
PLANTED_AWS_SECRET = "aws-secret-0123456789abcdef-PLANTED"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- what should land -------------------------------------------------------------------------


def is_update(event: dict[str, Any]) -> bool:
    return "adjust_action" in event and str(event["adjust_action"]).strip().lower() in ("2", "update")


@dataclass
class Expected:
    """Every unique event key and every update sequence id that must be stored exactly once."""

    events: set[str] = field(default_factory=set)
    adjustments: set[int] = field(default_factory=set)
    offered: int = 0  # events handed to the pipeline, duplicates included
    duplicates: int = 0  # of those, how many repeat a key offered before
    # What may be stored under each key: digests of the contents offered with it (more than one when
    # a key is re-sent with other content; the first to be committed wins).
    contents: dict[str | int, set[str]] = field(default_factory=dict)

    def add(self, events: list[dict[str, Any]]) -> None:
        self.offered += len(events)
        for e in events:
            key: str | int
            if is_update(e):
                key = int(e["adjustment_sequence_id"])
                self.adjustments.add(key)
            else:
                key = str(e["tune_event_id"])
                self.events.add(key)
            offered = self.contents.setdefault(key, set())
            self.duplicates += bool(offered)
            offered.add(content_digest(e))

    @classmethod
    def of(cls, events: list[dict[str, Any]]) -> Expected:
        expected = cls()
        expected.add(events)
        return expected


def content_digest(event: Any) -> str:
    """The same for two events with the same content, whatever their key order or spacing."""
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(canonical.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


def tune_body(events: list[dict[str, Any]]) -> str:
    """A queue message exactly as TUNE writes it: base64(gzip(envelope))."""
    return encode_envelope([dump_event(e) for e in events])


def pack(events: list[dict[str, Any]], per_message: int) -> list[tuple[str, list[dict[str, Any]]]]:
    return [
        (tune_body(events[i : i + per_message]), events[i : i + per_message])
        for i in range(0, len(events), per_message)
    ]


def read_only(path: Path | str) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    db.execute("PRAGMA busy_timeout=30000")
    return db


@dataclass
class Stored:
    events: list[str]
    adjustments: list[int]
    rejects: list[tuple[Any, ...]]  # (message_id, event_index, reason, raw[:200])
    envelopes: dict[str, int]  # message_id -> receive_count


def stored(db_path: Path | str) -> Stored:
    if not Path(db_path).exists():
        return Stored([], [], [], {})
    with contextlib.closing(read_only(db_path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "events" not in tables:
            return Stored([], [], [], {})
        events = [r[0] for r in db.execute("SELECT tune_event_id FROM events")]
        adjustments = [r[0] for r in db.execute("SELECT adjustment_sequence_id FROM adjustments")]
        rejects = db.execute("SELECT message_id, event_index, reason, substr(raw, 1, 200) FROM rejects").fetchall()
        envelopes = dict(db.execute("SELECT message_id, receive_count FROM envelopes").fetchall())
    return Stored(events, adjustments, rejects, envelopes)


def _not_offered(db_path: Path | str, expected: Expected) -> list[str | int]:
    """Keys whose stored row holds content never offered under that key (read row by row)."""
    wrong: list[str | int] = []
    with contextlib.closing(read_only(db_path)) as db:
        for sql in (
            "SELECT tune_event_id, raw_json FROM events",
            "SELECT adjustment_sequence_id, raw_json FROM adjustments",
        ):
            for key, raw in db.execute(sql):
                offered = expected.contents.get(key)
                if offered is not None and content_digest(json.loads(raw)) not in offered:
                    wrong.append(key)
    return wrong


def assert_exactly_once(db_path: Path | str, expected: Expected, rejects: int = 0) -> Stored:
    """Every expected event and update stored once, with content offered under its key, nothing
    else, and `rejects` rejects."""
    got = stored(db_path)
    missing = expected.events - set(got.events)
    extra = set(got.events) - expected.events
    assert not missing, f"{len(missing)} of {len(expected.events)} events lost, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} events stored that were never sent, e.g. {sorted(extra)[:3]}"
    missing_adj = expected.adjustments - set(got.adjustments)
    assert not missing_adj, f"{len(missing_adj)} of {len(expected.adjustments)} updates lost"
    extra_adj = set(got.adjustments) - expected.adjustments
    assert not extra_adj, f"{len(extra_adj)} updates stored that were never sent, e.g. {sorted(extra_adj)[:3]}"
    # Duplicates counted against the input: every repeat of a key was absorbed, no row was added
    # for one (the primary keys alone make a second row under the *same* key impossible, so that
    # is not what this checks; a repeat stored under another key is).
    rows = len(got.events) + len(got.adjustments)
    named_only = len({*expected.events, *expected.adjustments} - expected.contents.keys())  # keys added by hand
    assert rows == expected.offered - expected.duplicates + named_only, (
        f"{rows} rows for {expected.offered} events offered with {expected.duplicates} repeats"
    )
    wrong = _not_offered(db_path, expected)
    assert not wrong, f"{len(wrong)} rows hold content never offered under their key, e.g. {wrong[:3]}"
    assert len(got.rejects) == rejects, f"expected {rejects} rejects, got {got.rejects[:5]}"
    return got


# -- the local queue file, read from outside ------------------------------------------------------


@dataclass
class LocalQueueState:
    visible: int
    in_flight: int
    dead: int
    max_receive_count: int
    bodies: list[str]


def local_queue_state(path: Path | str) -> LocalQueueState:
    now = time.time()
    with contextlib.closing(read_only(path)) as db:
        rows = db.execute("SELECT body, visible_at, receive_count FROM messages").fetchall()
        dead = db.execute("SELECT body FROM dead_letters").fetchall()
    return LocalQueueState(
        visible=sum(1 for _, v, _ in rows if v <= now),
        in_flight=sum(1 for _, v, _ in rows if v > now),
        dead=len(dead),
        max_receive_count=max((c for _, _, c in rows), default=0),
        bodies=[b for b, _, _ in rows] + [b for (b,) in dead],
    )


# -- the worker as a child process -------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QUEUE_URL", "DB_PATH", "FIREHOSE_TOKEN")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class WorkerProcess:
    """`python read_queue.py --db DB --queue-url URL ...`, output captured to a file."""

    def __init__(
        self,
        db: Path | str,
        queue_url: str,
        log_dir: Path,
        name: str = "worker",
        until_empty: bool = True,
        visibility_timeout: int = 60,
        wait_seconds: float = 1,
        env: dict[str, str] | None = None,
        decode: str | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        """`decode`: --decode inline|process (None: the worker's default). `preexec`: runs in the
        child before exec (a resource limit, dropped capabilities)."""
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        args = [
            PYTHON,
            str(ROOT / "read_queue.py"),
            "--db",
            str(db),
            "--queue-url",
            queue_url,
            "--visibility-timeout",
            str(visibility_timeout),
            "--wait-seconds",
            str(wait_seconds),
        ]
        if until_empty:
            args.append("--until-empty")
        if decode is not None:
            args += ["--decode", decode]
        with open(self.log_path, "wb") as log:
            # cwd is the log directory, so a developer's .env never leaks into a test.
            self.proc = subprocess.Popen(
                args,
                cwd=log_dir,
                env=env or child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> bool:
        """Send `sig` if the process still runs; True when it was delivered."""
        if self.proc.poll() is not None:
            return False
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def finish(self, timeout: float) -> int:
        """Wait for the worker to exit on its own; kill it if it has not within `timeout`."""
        try:
            return self.wait(timeout)
        finally:
            self.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def writer_busy(db_path: Path | str) -> bool:
    """True while another connection holds the database's write lock (a batch being written).

    Probes with BEGIN IMMEDIATE and no busy wait; when it gets the lock it lets go at once.
    """
    if not Path(db_path).exists():
        return False
    db = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        db.close()


# -- chalice local -----------------------------------------------------------------------------------


def _stage() -> list[str]:
    """`--stage local` when .chalice/config.json has a stage without AWS queue URLs baked in."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    return ["--stage", "local"] if "local" in config.get("stages", {}) else []


class ChaliceLocal:
    """`chalice local --no-autoreload` in its own process group, on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [CHALICE, "local", "--no-autoreload", "--host", "127.0.0.1", "--port", str(self.port), *_stage()],
            cwd=ROOT,
            env=child_env(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"chalice local exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise AssertionError(f"chalice local did not answer on {self.url} within {timeout} s")

    def post(self, body: bytes, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
        """One POST on a fresh connection: (status, body); raises OSError/HTTPException if cut off."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", "/events", body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


# -- a fault-injecting HTTP proxy between boto3 and moto ------------------------------------------------

PASS, UNAVAILABLE, INTERNAL, THROTTLE, DROP, LOST = "pass", "503", "500", "throttle", "drop", "lost-reply"

_ERRORS = {
    UNAVAILABLE: (503, "ServiceUnavailable", "Service is unavailable, try again"),
    INTERNAL: (500, "InternalError", "We encountered an internal error, try again"),
    THROTTLE: (400, "ThrottlingException", "Rate exceeded"),
}


class FaultProxy:
    """Forwards SQS JSON-protocol requests to `upstream`, injecting faults chosen by `decide`.

    `decide(target)` gets the operation (e.g. "ReceiveMessage") and returns PASS, UNAVAILABLE,
    INTERNAL, THROTTLE, DROP (close the connection without forwarding) or LOST (forward, then
    close the connection without answering: the call happened but the caller cannot know). `refuse()` closes the
    listening socket so connections are refused, `accept()` opens it again on the same port.
    `check_delete(message_id, body)` runs when a DeleteMessage(Batch) request arrives, before any
    fault is decided, for each message it names (see tests/invariants.py); `handouts()` and
    `deletes()` list what was received and deleted through the proxy, in order.
    """

    def __init__(self, upstream: str, decide: Callable[[str], str] | None = None) -> None:
        self.upstream = urlparse(upstream)
        self.decide: Callable[[str], str] = decide or (lambda target: PASS)
        self.check_delete: Callable[[str, str], str | None] | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log: list[tuple[float, str, str]] = []  # (time, operation, action)
        self.ledger = ProxyLedger()
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.accept()

    # listening ---------------------------------------------------------------------------------
    def accept(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                proxy._handle(self)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def refuse(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = None

    def close(self) -> None:
        if self._server is not None:
            self.refuse()

    def count(self, since: float = 0.0, until: float = float("inf"), action: str | None = None) -> int:
        with self._lock:
            return sum(1 for t, _, a in self.log if since <= t <= until and (action is None or a == action))

    def handouts(self) -> list[Handout]:
        return self.ledger.handouts()

    def deletes(self) -> list[Delete]:
        return self.ledger.deletes()

    # forwarding --------------------------------------------------------------------------------
    def idle(self) -> bool:
        """No request is being handled (a killed worker's long poll may still be)."""
        with self._lock:
            return not +self._in_flight

    def in_flight(self, target: str) -> int:
        """How many `target` calls (e.g. "ReceiveMessage") are being handled right now."""
        with self._lock:
            return self._in_flight[target]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        target = (h.headers.get("X-Amz-Target") or "").rsplit(".", 1)[-1]
        with self._lock:
            self._in_flight[target] += 1
        try:
            self._forward(h)
        except OSError:  # the client is gone (a killed worker): nobody to answer
            h.close_connection = True
        finally:
            with self._lock:
                self._in_flight[target] -= 1

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        target = (h.headers.get("X-Amz-Target") or "").rsplit(".", 1)[-1]
        if target in ("DeleteMessageBatch", "DeleteMessage"):
            # Checked on arrival: a delete the proxy then fails was still sent too early.
            request = json.loads(body or b"{}")
            handles = [e["ReceiptHandle"] for e in request.get("Entries", [])] or [request.get("ReceiptHandle", "")]
            self.ledger.deleting(handles, self.check_delete)
        action = self.decide(target)
        with self._lock:
            self.log.append((time.monotonic(), target, action))
        if action == DROP:
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if action in _ERRORS:
            status, code, message = _ERRORS[action]
            payload = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
            h.send_response(status)
            h.send_header("Content-Type", "application/x-amz-json-1.0")
            h.send_header("x-amzn-query-error", f"{code};{'Sender' if status < 500 else 'Receiver'}")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
            return
        try:
            conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
            conn.request("POST", h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
        except OSError:  # upstream down (moto restarting): the client sees a cut connection
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if target == "ReceiveMessage" and resp.status == 200:
            self.ledger.handed_out(json.loads(data or b"{}").get("Messages", []))
        if action == LOST:
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


# -- a small file system that can fill up or turn read-only -------------------------------------------


@functools.cache
def can_mount() -> bool:
    """Root on Linux, and allowed to mount (a container may not be): tried once, on a 1 MiB tmpfs."""
    if not (sys.platform.startswith("linux") and hasattr(os, "geteuid") and os.geteuid() == 0):
        return False
    with tempfile.TemporaryDirectory() as probe:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], capture_output=True)
        if mounted.returncode != 0:
            return False
        subprocess.run(["umount", probe], check=False)
    return True


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


# -- the same faults without mount: a file-size limit, and root without its permission override ---------


def file_size_limit(max_bytes: int) -> Callable[[], None]:
    """preexec: no file the child writes may grow past `max_bytes` (RLIMIT_FSIZE). The write that
    would cross it fails with EFBIG ("File too large") as a full disk fails with ENOSPC; it binds
    root too and needs no privilege, so it runs in any container. SIGXFSZ, which would kill the
    writer instead, is ignored (CPython ignores it anyway)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return limit


_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3
_PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_permission_override() -> None:
    """preexec, for root: after exec the child lacks CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and
    CAP_FOWNER, so file modes bind it as they bind any user (root otherwise writes a 0444 file in a
    0555 directory). It keeps uid 0, so it still reads what root owns (an interpreter under /root).
    Dropped from the bounding, inheritable and ambient sets: exec gives root exactly those."""
    libc = ctypes.CDLL(None, use_errno=True)
    caps = (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER)
    for cap in caps:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for cap in caps:
        data[0].inheritable &= ~(1 << cap)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
