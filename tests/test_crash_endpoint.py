"""Issue 5, item 2: SIGKILL `chalice local` during a stream of POSTs.

Two producer threads POST small batches of uniquely keyed events, each on a fresh connection,
and record which events got a 202. The server (its whole process group) is killed with SIGKILL
at random moments and restarted, several times. Finally a worker drains the queue: every event
that got a 202 must be stored (once); events that got no answer may or may not be, and nothing
that was never sent appears.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from pathlib import Path

import pytest

from chalicelib.queues.local import LocalQueue
from tests.faultkit import ChaliceLocal, WorkerProcess, local_queue_state, stored, wait_for
from tests.invariants import LocalHarness

KILLS = 8
EVENTS_PER_POST = 20


class Producer:
    """POSTs batches to whichever server is current; records what was acknowledged."""

    def __init__(self) -> None:
        self.server: ChaliceLocal | None = None
        self.lock = threading.Lock()
        self.next_id = 0
        self.acked: set[str] = set()
        self.sent: set[str] = set()
        self.outcomes: dict[str, int] = {}
        self.stop = threading.Event()

    def _batch(self) -> list[dict[str, object]]:
        with self.lock:
            start, self.next_id = self.next_id, self.next_id + EVENTS_PER_POST
        return [{"action": "click", "tune_event_id": f"ep-{i}", "offer_id": i % 7} for i in range(start, start + 20)]

    def run(self) -> None:
        while not self.stop.is_set():
            server = self.server
            if server is None:
                time.sleep(0.01)
                continue
            events = self._batch()
            ids = {str(e["tune_event_id"]) for e in events}
            with self.lock:
                self.sent |= ids
            try:
                status, body = server.post(json.dumps(events).encode(), timeout=10)
                outcome = str(status)
            except (OSError, http.client.HTTPException):
                status, outcome = 0, "cut off"
            with self.lock:
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                if status == 202:
                    assert json.loads(body)["accepted"] == len(events)
                    self.acked |= ids


@pytest.mark.slow
def test_every_202_survives_sigkill_of_chalice_local(tmp_path: Path) -> None:
    queue_path = tmp_path / "queue.db"
    LocalQueue(queue_path).close()
    env = {"QUEUE_URL": f"local:{queue_path}"}
    rng = random.Random(2)
    producer = Producer()
    threads = [threading.Thread(target=producer.run, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    kills = 0
    server = None
    try:
        for _ in range(KILLS):
            server = ChaliceLocal(env, tmp_path / "chalice.log")
            producer.server = server
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill()  # SIGKILL to the whole process group, mid-stream
            kills += 1
            producer.server = None
        server = ChaliceLocal(env, tmp_path / "chalice.log")
        with producer.lock:
            before = len(producer.acked)
        producer.server = server
        # The last server must acknowledge something before the stream stops (a signal, not a sleep).
        wait_for(lambda: len(producer.acked) > before, 60, "a 202 from the restarted chalice local")
    finally:
        producer.stop.set()
        for t in threads:
            t.join(30)
        if server is not None:
            server.stop()

    assert producer.acked, "no request was acknowledged: the test proves nothing"
    assert producer.outcomes.get("cut off", 0) > 0 or kills == 0
    db_path = tmp_path / "firehose.db"
    # The drain runs under the invariant watch: each delete is checked against the database.
    harness = LocalHarness(queue_path, db_path, tmp_path)
    try:
        worker = WorkerProcess(db_path, harness.url, tmp_path, visibility_timeout=10, env=harness.env())
        assert harness.wait(worker, 120) == 0, worker.output()[-3000:]
        assert harness.checked() > 0, "no delete went through the invariant check"
    finally:
        harness.close()
    got = stored(db_path)
    have = set(got.events)
    lost = producer.acked - have
    assert not lost, f"{len(lost)} of {len(producer.acked)} acknowledged events were lost, e.g. {sorted(lost)[:5]}"
    assert have <= producer.sent, "events were stored that were never sent"
    assert len(got.events) == len(have) and not got.rejects
    state = local_queue_state(queue_path)
    assert (state.visible, state.in_flight, state.dead) == (0, 0, 0)
    print(
        f"\n[crash-endpoint] kills={kills} outcomes={producer.outcomes} acked_events={len(producer.acked)} "
        f"stored={len(have)} (unacknowledged but stored: {len(have - producer.acked)}) lost=0"
    )
