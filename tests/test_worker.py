"""The worker loop: one transaction per batch, delete after COMMIT, duplicates and redelivery harmless."""

from __future__ import annotations

import io
import marshal
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.drain import child_pids
from bench.generate import Generator
from chalicelib.queues.local import LocalQueue
from db.batch import Incoming
from db.store import TABLES, Store
from tests.faultkit import wait_for
from tests.invariants import LocalHarness
from tests.kit import deliver, drain, one, rows, tune_message
from worker.decoders import Decoder, InlineDecoder, ProcessDecoder, _read_frame, _write_frame, decode_batch, serve
from worker.loop import Limits, Worker
from worker.rows import Batch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["inline", "process"])
def decoder(request: pytest.FixtureRequest) -> Iterator[Decoder]:
    """Both ways the worker decodes: in its own thread, or in a helper process, overlapped with writing."""
    made: Decoder = InlineDecoder() if request.param == "inline" else ProcessDecoder()
    yield made
    made.close()


def as_stored(batch: Batch) -> list[list[tuple[object, ...]]]:
    """A batch's rows as the database holds them: NaN (binding.NULL, how the helper sends empty
    columns) and None are both NULL. (NaN != NaN, so rows holding it never compare equal.)"""
    return [
        [tuple(None if v != v else v for v in row) for row in rows]
        for rows in (batch.events, batch.adjustments, batch.envelopes, batch.rejects)
    ]


def ev(i: int, **extra) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return {"action": "click", "tune_event_id": f"id-{i}", "offer_id": i % 3, **extra}


def test_events_land_once_and_messages_are_deleted(local_queue: LocalQueue, tmp_path: Path, decoder: Decoder) -> None:
    deliver(local_queue, [ev(i) for i in range(50)], [ev(i) for i in range(50, 100)])
    worker = drain(local_queue, tmp_path / "f.db", decoder)
    assert one(tmp_path / "f.db", "SELECT count(*) FROM events") == 100
    assert worker.totals.written.events == 100 and worker.totals.messages == 2
    depth = local_queue.depth()
    assert depth.visible == depth.in_flight == 0


def test_duplicates_inside_and_across_messages_are_ignored(
    local_queue: LocalQueue, tmp_path: Path, decoder: Decoder
) -> None:
    deliver(local_queue, [ev(1), ev(2), ev(1)], [ev(2), ev(3)])
    worker = drain(local_queue, tmp_path / "f.db", decoder)
    assert rows(tmp_path / "f.db", "SELECT tune_event_id FROM events ORDER BY 1") == [("id-1",), ("id-2",), ("id-3",)]
    assert worker.totals.written.duplicates == 2


def test_redelivery_of_a_committed_message_changes_nothing(local_queue: LocalQueue, tmp_path: Path) -> None:
    """A worker that committed and crashed before deleting: the message comes back, and nothing changes."""
    db = tmp_path / "f.db"
    deliver(local_queue, [ev(1), ev(2)])
    store = Store.open(db)
    worker = Worker(local_queue, store, Limits(wait_seconds=0, visibility_timeout=1), out=None)
    [message] = local_queue.receive(10, 0, 1)

    batch = Batch()
    batch.add_message(message.message_id, message.body, 1)
    store.write(batch)  # committed, but the "crash" means no delete
    before = rows(db, "SELECT * FROM events ORDER BY 1")
    wait_for(lambda: local_queue.depth().visible == 1, 10, "the message's visibility timeout to run out")
    assert worker.run(until_empty=True) == 0
    assert rows(db, "SELECT * FROM events ORDER BY 1") == before
    assert worker.totals.written.duplicates == 2 and local_queue.depth().visible == 0
    store.close()


def test_undecodable_message_goes_to_rejects_and_is_deleted(
    local_queue: LocalQueue, tmp_path: Path, decoder: Decoder
) -> None:
    assert local_queue.send_all(["H4sI-this-is-not-gzip", tune_message([ev(1)])]).ok
    worker = drain(local_queue, tmp_path / "f.db", decoder)
    [(reason, raw, index)] = rows(tmp_path / "f.db", "SELECT reason, raw, event_index FROM rejects")
    assert reason.startswith("message undecodable:") and raw == "H4sI-this-is-not-gzip" and index is None
    assert one(tmp_path / "f.db", "SELECT count(*) FROM events") == 1
    assert worker.totals.written.rejects == 1
    assert local_queue.depth().visible == local_queue.depth().in_flight == 0


def test_graceful_stop_commits_and_deletes_the_batch_in_hand(
    local_queue: LocalQueue, tmp_path: Path, decoder: Decoder
) -> None:
    deliver(local_queue, *[[ev(i * 10 + j) for j in range(10)] for i in range(30)])

    class StopDuringWrite(Store):
        def write(self, batch, give_up=lambda: False):  # type: ignore[no-untyped-def]
            worker.request_stop()  # as a SIGTERM arriving mid-transaction would
            return super().write(batch, give_up)

    store = StopDuringWrite.open(tmp_path / "f.db")
    worker = Worker(local_queue, store, Limits(wait_seconds=0, max_batch_events=50), out=None, decoder=decoder)
    assert worker.run() == 0
    written = one(tmp_path / "f.db", "SELECT count(*) FROM events")
    # It stopped after the batch in hand (and, with a helper, the one decoding behind it)...
    assert 0 < written <= (200 if decoder.overlaps else 100)  # 10 messages of 10 per receive
    depth = local_queue.depth()
    assert depth.in_flight == 0  # ...which it deleted, leaving nothing half-done
    assert depth.visible * 10 + written == 300


def test_batches_overlap_and_commit_in_order(tmp_path: Path) -> None:
    """With the helper, the next batch is received and decoding before this one is written, and the
    batches are still written oldest first, each deleted only after its own commit (checked inside
    each delete by the queue file's trigger, tests/invariants.py)."""
    watch = LocalHarness(tmp_path / "q.db", tmp_path / "f.db", tmp_path)
    local_queue = watch.queue
    deliver(local_queue, *[[ev(i * 10 + j) for j in range(10)] for i in range(40)])
    seen: list[tuple[int, int]] = []

    class Watching(Store):
        def write(self, batch, give_up=lambda: False):  # type: ignore[no-untyped-def]
            depth = local_queue.depth()
            # in flight: this batch, plus the one the helper is decoding
            seen.append((depth.in_flight, min(int(row[0].split("-")[1]) for row in batch.events)))
            return super().write(batch, give_up)

    store = Watching.open(tmp_path / "f.db")
    with ProcessDecoder() as decoder:
        worker = Worker(local_queue, store, Limits(wait_seconds=0, max_batch_events=50), out=None, decoder=decoder)
        assert worker.run(until_empty=True) == 0
    store.close()
    assert one(tmp_path / "f.db", "SELECT count(*) FROM events") == 400
    assert max(in_flight for in_flight, _ in seen) > 5  # more than one batch's messages were in hand
    firsts = [first for _, first in seen]
    assert firsts == sorted(firsts)  # oldest batch first
    assert local_queue.depth().in_flight == local_queue.depth().visible == 0
    watch.check()  # no message was deleted before its events were committed
    assert watch.checked() == 40
    assert watch.overlapped_deletes() > 0  # batches were deleted while the next was already in hand
    watch.close()


def test_a_dead_helper_is_replaced_and_its_batch_decoded_here(local_queue: LocalQueue, tmp_path: Path) -> None:
    deliver(local_queue, [ev(i) for i in range(30)])
    [message] = local_queue.receive(10, 0, 60)
    items = [(message.message_id, message.body, message.receive_count)]
    with ProcessDecoder() as decoder:
        first = decoder.start().pid
        os.kill(first, signal.SIGKILL)
        got = Incoming(decoder.submit(items, 1 << 20, 1_700_000_000)).whole()
        assert got == decode_batch(items, 1 << 20, 1_700_000_000)
        again = Incoming(decoder.submit(items, 1 << 20, 1_700_000_000)).whole()
        assert decoder.pid != first  # a new helper took over...
        assert as_stored(again) == as_stored(got)  # ...and decodes the same


def test_helper_protocol_one_frame_per_message_then_an_end(local_queue: LocalQueue) -> None:
    """What the helper reads and writes: a request per batch; a ready frame first, then one frame of
    rows per message as it is decoded, then an empty frame. End of input ends it."""
    deliver(local_queue, [ev(1), ev(2)], [ev(3)])
    items = [(m.message_id, m.body, m.receive_count) for m in local_queue.receive(10, 0, 60)]
    requests = io.BytesIO()
    _write_frame(requests, marshal.dumps((items, 1 << 20, 1_700_000_000)))
    requests.seek(0)
    replies = io.BytesIO()
    serve(requests, replies)  # returns at the end of its input
    replies.seek(0)
    frames = []
    while (frame := _read_frame(replies)) is not None:
        frames.append(frame)
    assert frames[0] == b"" and frames[-1] == b"" and len(frames) == 2 + len(items)
    for item, frame in zip(items, frames[1:-1], strict=True):
        sent = Batch(*marshal.loads(frame))  # noqa: S302 - the helper's own output
        assert as_stored(sent) == as_stored(decode_batch([item], 1 << 20, 1_700_000_000))


def test_rows_built_for_binding_store_the_same_values(tmp_path: Path) -> None:
    """The worker builds rows with empty columns as NaN (`worker.rows.NULL`), and the store binds
    them as they are. The database must then hold exactly what the same rows with None give."""
    events = Generator(7).events(600)  # the benchmark's mix: every kind of event, updates, duplicates
    events[5] = {"tune_event_id": "no-action"}  # and a reject
    items = [(f"m{i}", tune_message(events[i : i + 100]), 1) for i in range(0, len(events), 100)]
    bound = decode_batch(items, 1 << 25, 1_700_000_000)  # the worker's, whichever decoder
    plain = Batch(*as_stored(bound))  # the same rows with None
    assert any(v != v for row in bound.events for v in row) and not any(v != v for row in plain.events for v in row)
    assert not [v for row in bound.events for v in row if v is None]  # nothing left for `bindable` to do
    assert as_stored(bound) == as_stored(plain)
    for name, batch in (("plain", plain), ("bound", bound)):
        store = Store.open(tmp_path / f"{name}.db")
        store.write(batch)
        store.close()
    for table in TABLES:
        stored = rows(tmp_path / "plain.db", f"SELECT * FROM {table} ORDER BY 1")
        assert stored and stored == rows(tmp_path / "bound.db", f"SELECT * FROM {table} ORDER BY 1")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_helper_processes_do_not_outlive_a_killed_worker(tmp_path: Path) -> None:
    cmd = [sys.executable, "read_queue.py", "--db", str(tmp_path / "f.db"), "--queue-url", f"local:{tmp_path / 'q'}"]
    proc = subprocess.Popen([*cmd, "--decode", "process", "--quiet"], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (helpers := child_pids(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert helpers, "the worker started no helper process"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(h) for h in helpers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(h) for h in helpers), "a helper outlived its killed worker"
    finally:
        proc.kill()


def _auto_decoder_on(cpus: set[int]) -> str:
    """The decoder `--decode auto` makes in a process allowed to run on these CPUs only."""
    script = (
        "import os, sys; os.sched_setaffinity(0, set(map(int, sys.argv[1:])));"
        "from worker.decoders import make_decoder; d = make_decoder('auto'); print(type(d).__name__); d.close()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, cpus)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_auto_decodes_in_a_helper_only_with_a_second_cpu_to_run_it_on() -> None:
    # The CPUs a process may use (a container's cpuset, `taskset`), not the machine's count: on one
    # CPU a helper only adds the cost of sending rows across its pipe (docs/operating.md).
    allowed = os.sched_getaffinity(0)
    assert len(allowed) > 1, "this test needs a machine with two CPUs"
    assert _auto_decoder_on(allowed) == "ProcessDecoder"
    assert _auto_decoder_on({min(allowed)}) == "InlineDecoder"


def test_worker_cli_until_empty_and_sigterm(tmp_path: Path) -> None:
    queue_path, db = tmp_path / "q.db", tmp_path / "f.db"
    queue = LocalQueue(queue_path)
    deliver(queue, [ev(i) for i in range(20)])
    cmd = [sys.executable, "read_queue.py", "--db", str(db), "--queue-url", f"local:{queue_path}"]
    done = subprocess.run([*cmd, "--until-empty"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "events 20" in done.stderr  # the progress/summary line
    assert one(db, "SELECT count(*) FROM events") == 20
    # A long-polling worker stops promptly on SIGTERM and exits 0, signalled once it says it is ready.
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("worker started" in line for line in lines) or proc.poll() is not None, 60, "ready")
        assert proc.poll() is None, "".join(lines)
        proc.terminate()
        assert proc.wait(timeout=10) == 0, "".join(lines)
    finally:
        proc.kill()


def test_bad_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "read_queue.py", "--until-empty", "--queue-url", "ftp://nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "QUEUE_URL" in done.stderr
