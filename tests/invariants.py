"""The invariant checked at the moment of every delete: a message leaves the queue only once its
events and updates are committed in the database.

One check (`uncommitted`), two places it runs, both at the instant of the delete and in the
process that sees it happen:

- Local queue: a BEFORE DELETE trigger in the queue file calls the SQL function
  `firehose_invariant(message_id, body)` inside the deleting transaction. Whatever process
  deletes registers the function: the worker (a real `python read_queue.py` process) through a
  `sitecustomize.py` that the harness writes to a temporary directory on its PYTHONPATH, which
  wraps `sqlite3.connect` so connections to the watched queue file get the function; the test
  process through `LocalHarness`. A trigger sees every row deleted, whichever code path deleted
  it, and its record commits or rolls back with the delete itself, so a kill mid-delete leaves
  no false record. Rows moved to `dead_letters` are not deletes by the worker: not checked.
  A timestamp trigger compared with the database afterwards could not tell "committed" from
  "inserted but not yet committed"; this check reads the database through its own connection,
  which sees committed rows only.
- SQS: an HTTP proxy in front of moto (`tests.faultkit.FaultProxy`) remembers the message id and
  body behind every receipt handle it hands out and runs the same check when a DeleteMessage or
  DeleteMessageBatch request arrives, before it forwards (or fails) the request.

A message is committed when its envelope row exists and each of its events that carries a key
of its own (tune_event_id or event_id; an update's adjustment_sequence_id) is in `events` or
`adjustments`, or is rejected with this message's id and the event's index. The body is decoded
here with the standard library, independently of `chalicelib.codec`.

Each handout (receive) and each delete is also logged with a sequence number, so a test can tell
whether a worker held two groups of messages at the moment it was killed (`in_hand`).

This module is also imported by the worker processes under test (through the generated
sitecustomize), so at module level it imports the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chalicelib.queues.base import Queue
    from tests.faultkit import FaultProxy, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
WATCH_ENV = "FIREHOSE_INVARIANT_WATCH"  # JSON: {queue file: database file}
FUNCTION = "firehose_invariant"
_real_connect = sqlite3.connect

# -- what a message must have left in the database -------------------------------------------------


@dataclass
class Keys:
    """The keys a message body promises, read without the code under test."""

    events: dict[str, list[int]] = field(default_factory=dict)  # key -> event indexes
    updates: dict[int, list[int]] = field(default_factory=dict)  # adjustment_sequence_id -> indexes
    unkeyed: list[int] = field(default_factory=list)  # not checkable here: a reject is expected
    parsed: bool = True


def _json_bytes(body: str) -> bytes | None:
    raw = body.encode("utf-8", "surrogatepass").strip()
    if raw[:1] in (b"{", b"["):
        return raw
    if raw[:2] != b"\x1f\x8b":
        try:
            raw = base64.b64decode(b"".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            return None
    if raw[:2] == b"\x1f\x8b" or raw[:1] == b"\x78":
        try:
            return zlib.decompress(raw, 47)
        except zlib.error:
            return None
    return raw if raw.lstrip()[:1] in (b"{", b"[") else None


def _is_key(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and bool(str(value).strip())


def message_keys(body: str) -> Keys:
    keys = Keys()
    data = _json_bytes(body)
    try:
        doc = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        doc = None
    events = doc if isinstance(doc, list) else doc.get("events") if isinstance(doc, dict) else None
    if not isinstance(events, list):
        keys.parsed = False
        return keys
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            keys.unkeyed.append(index)
            continue
        action = event.get("adjust_action")
        if action is not None and str(action).strip().lower() in ("2", "update"):
            sequence = event.get("adjustment_sequence_id")
            if isinstance(sequence, int) and not isinstance(sequence, bool):
                keys.updates.setdefault(sequence, []).append(index)
            else:
                keys.unkeyed.append(index)
            continue
        key = next((event[n] for n in ("tune_event_id", "event_id") if _is_key(event.get(n))), None)
        if key is None:
            keys.unkeyed.append(index)
        else:
            keys.events.setdefault(str(key).strip(), []).append(index)
    return keys


def _missing(db: sqlite3.Connection, sql: str, keys: list[Any]) -> list[Any]:
    if not keys:
        return []
    return [row[0] for row in db.execute(sql, (json.dumps(keys),))]


def uncommitted(db_path: str | Path, message_id: str, body: str) -> str | None:
    """What of this message is not committed in the database at `db_path`; None when all is."""
    if not Path(db_path).exists():
        return "the database does not exist yet"
    keys = message_keys(body)
    try:
        db = _real_connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return f"the database cannot be read: {exc}"
    try:
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("BEGIN")  # one snapshot for all the questions below
        if db.execute("SELECT count(*) FROM envelopes WHERE message_id = ?", (message_id,)).fetchone()[0] != 1:
            return "its envelope is not committed"
        missing_events = _missing(
            db,
            "SELECT value FROM json_each(?) WHERE value NOT IN (SELECT tune_event_id FROM events)",
            list(keys.events),
        )
        missing_updates = _missing(
            db,
            "SELECT value FROM json_each(?) WHERE value NOT IN (SELECT adjustment_sequence_id FROM adjustments)",
            list(keys.updates),
        )
        rejected = {r[0] for r in db.execute("SELECT event_index FROM rejects WHERE message_id = ?", (message_id,))}
    except sqlite3.Error as exc:
        return f"the database cannot be read: {exc}"
    finally:
        db.close()
    lost_events = [k for k in missing_events if not set(keys.events[k]) <= rejected]
    lost_updates = [k for k in missing_updates if not set(keys.updates[k]) <= rejected]
    if not lost_events and not lost_updates:
        return None
    return (
        f"{len(lost_events)} of {len(keys.events)} events (e.g. {lost_events[:2]}) and "
        f"{len(lost_updates)} of {len(keys.updates)} updates (e.g. {lost_updates[:2]}) are not committed"
    )


def _checker(db_path: str) -> Callable[[str, str], str | None]:
    def check(message_id: str, body: str) -> str | None:
        try:
            problem = uncommitted(db_path, message_id, body)
        except Exception as exc:  # never abort the delete from here: record instead
            problem = f"the invariant check failed: {exc!r}"
        if problem:
            print(f"INVARIANT VIOLATED: message {message_id} deleted: {problem}", file=sys.stderr, flush=True)
        return problem

    return check


# -- local queue: trigger + SQL function --------------------------------------------------------------

_TRIGGERS = f"""
CREATE TABLE IF NOT EXISTS invariant_handouts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, receipt TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS invariant_deletes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, receipt TEXT, at REAL NOT NULL,
    handouts_seen INTEGER NOT NULL, problem TEXT
);
CREATE TRIGGER IF NOT EXISTS invariant_handout AFTER UPDATE OF receipt ON messages
WHEN new.receipt IS NOT NULL
BEGIN
    INSERT INTO invariant_handouts (message_id, receipt, at)
    VALUES (new.message_id, new.receipt, (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TRIGGER IF NOT EXISTS invariant_delete BEFORE DELETE ON messages
WHEN NOT EXISTS (SELECT 1 FROM dead_letters WHERE message_id = old.message_id)
BEGIN
    INSERT INTO invariant_deletes (message_id, receipt, at, handouts_seen, problem)
    VALUES (
        old.message_id, old.receipt, (julianday('now') - 2440587.5) * 86400.0,
        coalesce((SELECT max(seq) FROM invariant_handouts), 0),
        {FUNCTION}(old.message_id, old.body)
    );
END;
"""


def register(conn: sqlite3.Connection, db_path: str | Path) -> None:
    """Give a connection to a watched queue file the function its delete trigger calls."""
    conn.create_function(FUNCTION, 2, _checker(str(db_path)))


def _resolved(database: Any) -> str | None:
    try:
        name = os.fspath(database)
        if isinstance(name, str) and name.startswith("file:"):  # db/sqlite.py opens files by URI
            from urllib.parse import unquote, urlsplit

            name = unquote(urlsplit(name).path)
        return str(Path(name).resolve())
    except (TypeError, ValueError, OSError):
        return None


def install_from_env() -> None:
    """In a worker under test (called by the generated sitecustomize): every connection opened to
    a watched queue file gets the check function."""
    spec = os.environ.get(WATCH_ENV)
    if not spec:
        return
    watched = {_resolved(queue): db for queue, db in json.loads(spec).items()}

    def connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = _real_connect(database, *args, **kwargs)
        db_path = watched.get(_resolved(database))
        if db_path is not None:
            register(conn, db_path)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]


_SITECUSTOMIZE = """\
# Written by tests/invariants.py for a worker under test: load the invariant check.
import importlib.util as _util
import sys as _sys

_spec = _util.spec_from_file_location("firehose_invariants", {path!r})
_module = _util.module_from_spec(_spec)
_sys.modules["firehose_invariants"] = _module
_spec.loader.exec_module(_module)
_module.install_from_env()
"""


def site_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(path=str(Path(__file__).resolve())))
    return directory


# -- what every harness reports ------------------------------------------------------------------------


@dataclass(frozen=True)
class Handout:
    seq: int
    message_id: str
    receipt: str
    at: float


@dataclass(frozen=True)
class Delete:
    message_id: str
    receipt: str | None
    at: float
    handouts_seen: int  # the last handout before this delete
    problem: str | None


@dataclass(frozen=True)
class InHand:
    """What a worker held at a moment: received since a mark and not deleted."""

    messages: int
    two_groups: bool  # two of them were received on either side of a delete: two groups in hand


class Harness:
    """The invariant watch on one queue and one database; see LocalHarness and SqsHarness."""

    backend: str
    url: str
    db_path: Path
    queue: Queue

    def handouts(self, since: int = 0) -> list[Handout]:
        """Handouts numbered after `since`, in order."""
        raise NotImplementedError

    def deletes(self, since: int = 0) -> list[Delete]:
        """Deletes made after handout `since` (all deletes when 0), in order."""
        raise NotImplementedError

    def violations(self) -> list[Delete]:
        raise NotImplementedError

    def settle(self) -> None:
        """After a kill: wait until nothing the dead worker started can still be logged."""

    def use_database(self, db_path: Path) -> None:
        """Check deletes against this database from now on (a test that moves it elsewhere)."""
        self.db_path = Path(db_path)

    def env(self, **extra: str) -> dict[str, str]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # checks ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail now if any delete so far took a message whose events were not committed."""
        for d in self.violations()[:1]:
            raise AssertionError(
                f"message {d.message_id} was deleted before it was committed in {self.db_path.name} "
                f"({self.backend} queue): {d.problem}"
            )

    def checked(self, since: int = 0) -> int:
        return len(self.deletes(since))

    def mark(self) -> int:
        """The current handout number, to count from."""
        handouts = self.handouts(self._mark)
        if handouts:
            self._mark = handouts[-1].seq
        return self._mark

    _mark = 0

    def in_hand(self, since: int) -> InHand:
        """Messages handed out after handout `since` and not deleted (yet). A receipt superseded by
        a later handout of the same message (its visibility ran out) no longer counts."""
        deletes = self.deletes(since)
        gone = {d.receipt for d in deletes}
        handouts = self.handouts(since)
        latest = {h.message_id: h.seq for h in handouts}
        held = [h for h in handouts if h.receipt not in gone and latest[h.message_id] == h.seq]
        if not held:
            return InHand(0, False)
        first, last = held[0].seq, held[-1].seq
        return InHand(len(held), any(first <= d.handouts_seen < last for d in deletes))

    def overlapped_deletes(self, since: int = 0) -> int:
        """How many groups were deleted while the next group was already in hand: some message
        handed out before that delete was deleted after it. Deletes after the same handout belong
        to one group (no receive can fall between them)."""
        handed = {h.receipt: h.seq for h in self.handouts(since)}
        deletes = [(handed[d.receipt], d.handouts_seen) for d in self.deletes(since) if d.receipt in handed]
        groups = {seen for _, seen in deletes}
        return sum(1 for group in groups if any(received <= group < seen for received, seen in deletes))

    # waiting, with the check at every step ---------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            if predicate():
                return
            time.sleep(interval)
        self.check()
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait(self, worker: WorkerProcess, timeout: float) -> int:
        """The worker's exit code; fails at the first violation, or kills the worker at `timeout`."""
        try:
            self.wait_for(lambda: not worker.alive(), timeout, f"{worker.log_path.stem} to exit", 0.05)
        except AssertionError:
            worker.stop()
            raise
        self.check()
        return worker.proc.returncode


class LocalHarness(Harness):
    backend = "local"

    def __init__(self, queue_path: Path, db_path: Path, work_dir: Path) -> None:
        from chalicelib.queues.local import LocalQueue

        self.queue_path, self.db_path = Path(queue_path), Path(db_path)
        self.url = f"local:{self.queue_path}"
        self.queue = LocalQueue(self.queue_path)  # creates the queue's tables
        with contextlib.closing(_real_connect(self.queue_path, timeout=60)) as db, db:
            db.executescript(_TRIGGERS)
        register(self.queue._db, self.db_path)
        self._site = site_dir(work_dir / "invariant-site")

    def env(self, **extra: str) -> dict[str, str]:
        from tests.faultkit import child_env

        path = os.pathsep.join(p for p in (str(self._site), os.environ.get("PYTHONPATH", "")) if p)
        watch = json.dumps({str(self.queue_path): str(self.db_path)})
        return child_env(PYTHONPATH=path, **{WATCH_ENV: watch}, **extra)

    def use_database(self, db_path: Path) -> None:
        super().use_database(db_path)
        register(self.queue._db, self.db_path)

    def watch(self, conn: sqlite3.Connection) -> None:
        """Another connection of this process to the queue file may delete too: give it the check."""
        register(conn, self.db_path)

    def _read(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(_real_connect(f"file:{self.queue_path}?mode=ro", uri=True, timeout=30)) as db:
            db.execute("PRAGMA busy_timeout=30000")
            return db.execute(sql, params).fetchall()

    def handouts(self, since: int = 0) -> list[Handout]:
        rows = self._read(
            "SELECT seq, message_id, receipt, at FROM invariant_handouts WHERE seq > ? ORDER BY seq", since
        )
        return [Handout(*r) for r in rows]

    _DELETES = "SELECT message_id, receipt, at, handouts_seen, problem FROM invariant_deletes"

    def deletes(self, since: int = 0) -> list[Delete]:
        return [Delete(*r) for r in self._read(f"{self._DELETES} WHERE handouts_seen > ? ORDER BY seq", since)]

    def violations(self) -> list[Delete]:
        return [Delete(*r) for r in self._read(f"{self._DELETES} WHERE problem IS NOT NULL ORDER BY seq LIMIT 5")]

    def close(self) -> None:
        self.queue.close()


class SqsHarness(Harness):
    """A proxy in front of moto that checks each delete; the worker talks to SQS through it."""

    backend = "sqs"

    def __init__(
        self,
        moto_server: str,
        db_path: Path,
        name: str,
        decide: Callable[[str], str] | None = None,
        max_receive_count: int = 5,
    ) -> None:
        import boto3

        from chalicelib.queues.sqs import SqsQueue
        from tests.faultkit import FaultProxy
        from tests.kit import make_sqs_queue

        self.db_path = Path(db_path)
        self.client = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
        self.url, self.dlq_url = make_sqs_queue(self.client, name, max_receive_count)
        self.queue = SqsQueue(self.url, self.client)  # the test's sends go straight to moto
        self.proxy: FaultProxy = FaultProxy(moto_server, decide)
        self.proxy.check_delete = lambda message_id, body: _checker(str(self.db_path))(message_id, body)

    def env(self, **extra: str) -> dict[str, str]:
        from tests.faultkit import child_env

        return child_env(AWS_ENDPOINT_URL_SQS=self.proxy.url, **extra)

    def handouts(self, since: int = 0) -> list[Handout]:
        return [h for h in self.proxy.handouts() if h.seq > since]

    def deletes(self, since: int = 0) -> list[Delete]:
        return [d for d in self.proxy.deletes() if d.handouts_seen > since]

    def violations(self) -> list[Delete]:
        return [d for d in self.proxy.deletes() if d.problem][:5]

    def settle(self) -> None:
        # A killed worker's long poll is still forwarded, and its messages would be logged as
        # handed out (to nobody) during the next round.
        self.wait_for(self.proxy.idle, 60, "the proxy to finish the killed worker's requests")

    def depth(self) -> tuple[int, int, int]:
        """(visible, in flight, dead) as moto counts them."""
        from tests.kit import sqs_depth

        visible, in_flight = sqs_depth(self.client, self.url)
        return visible, in_flight, sum(sqs_depth(self.client, self.dlq_url))

    def close(self) -> None:
        self.proxy.close()
        self.queue.close()


@contextlib.contextmanager
def harness(
    backend: str, tmp_path: Path, db_path: Path | None = None, moto_server: str | None = None, **sqs: Any
) -> Iterator[Harness]:
    """The invariant watch for `backend` ("local" or "sqs"), on a fresh queue."""
    db = db_path or tmp_path / "firehose.db"
    made: Harness
    if backend == "local":
        made = LocalHarness(tmp_path / "queue.db", db, tmp_path)
    else:
        assert moto_server, "the sqs harness needs the moto_server fixture"
        made = SqsHarness(moto_server, db, f"inv-{time.time_ns()}", **sqs)
    try:
        yield made
    finally:
        made.close()


def leftovers(h: Harness) -> tuple[int, int, int]:
    """(visible, in flight, dead) on the harness's queue."""
    if isinstance(h, SqsHarness):
        return h.depth()
    from tests.faultkit import local_queue_state

    assert isinstance(h, LocalHarness)
    state = local_queue_state(h.queue_path)
    return state.visible, state.in_flight, state.dead


# -- the proxy's bookkeeping (used by tests.faultkit.FaultProxy) ---------------------------------------


class ProxyLedger:
    """Receipt handles handed out through the proxy and the deletes that came back, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handouts: list[Handout] = []
        self._deletes: list[Delete] = []
        self._by_receipt: dict[str, tuple[str, str]] = {}

    def handed_out(self, messages: list[dict[str, Any]]) -> None:
        with self._lock:
            for m in messages:
                self._by_receipt[m["ReceiptHandle"]] = (m["MessageId"], m["Body"])
                self._handouts.append(Handout(len(self._handouts) + 1, m["MessageId"], m["ReceiptHandle"], time.time()))

    def body(self, receipt: str) -> str | None:
        with self._lock:
            known = self._by_receipt.get(receipt)
        return None if known is None else known[1]

    def deleting(self, receipts: list[str], check: Callable[[str, str], str | None] | None) -> None:
        at = time.time()
        with self._lock:
            seen = len(self._handouts)
            known = [(r, self._by_receipt.get(r)) for r in receipts]
        for receipt, message in known:
            if message is None:
                record = Delete("?", receipt, at, seen, "a receipt the proxy never handed out")
            else:
                record = Delete(message[0], receipt, at, seen, check(*message) if check else None)
            with self._lock:
                self._deletes.append(record)

    def handouts(self) -> list[Handout]:
        with self._lock:
            return list(self._handouts)

    def deletes(self) -> list[Delete]:
        with self._lock:
            return list(self._deletes)
