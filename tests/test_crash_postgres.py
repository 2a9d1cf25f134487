"""Issue 14's fault test: three worker processes (`read_queue.py --db postgresql://...`) drain one
moto SQS queue into one PostgreSQL database while ten of them are killed with SIGKILL, each
replaced at once, and then the server itself is restarted mid-run (`pg_ctl restart -m immediate`).
Every event must be stored exactly once, counted by key against the input.

The kills and the restart are spread over the run by progress: the n-th comes once the database
holds n/13 of the messages' envelopes, so they land while batches are in flight, not after the
drain. A killed worker's messages come back after the visibility timeout and are written again;
the keys make a rewrite of what did commit change nothing.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.generate import Generator
from chalicelib.queues.sqs import SqsQueue
from chalicelib.settings import Settings
from tests.faultkit import Expected, WorkerProcess, child_env, pack, wait_for
from tests.kit import dlq_url, set_max_receive_count, sqs_depth

WORKERS = 3
KILLS = 10
EVENTS = 20_000
PER_MESSAGE = 50  # 400 messages, about 40 batches of 10 messages across the workers
VISIBILITY = 3  # seconds before a killed worker's messages are handed out again
SEED = 14


def envelopes(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return int(conn.execute("SELECT count(*) FROM envelopes").fetchone()[0])  # type: ignore[index]
    except psycopg.Error:  # not migrated yet, or the server restarting: no progress to see
        return 0


def stored_keys(url: str) -> tuple[dict[str, int], dict[int, int]]:
    with psycopg.connect(url) as conn:
        events = dict(conn.execute("SELECT tune_event_id, count(*) FROM events GROUP BY 1").fetchall())
        updates = dict(conn.execute("SELECT adjustment_sequence_id, count(*) FROM adjustments GROUP BY 1").fetchall())
    return events, updates


@pytest.mark.slow
def test_three_workers_ten_sigkills_and_a_server_restart_lose_and_double_nothing(
    tmp_path: Path, pg_cluster: Any, pg_url: str, sqs_settings: Settings, sqs_client: Any, moto_server: str
) -> None:
    events = Generator(SEED).events(EVENTS)
    expected = Expected.of(events)
    bodies = [body for body, _ in pack(events, PER_MESSAGE)]
    queue = SqsQueue.from_settings(sqs_settings)
    try:
        for start in range(0, len(bodies), 10):
            assert queue.send_all(bodies[start : start + 10]).ok
    finally:
        queue.close()
    url = sqs_settings.queue_url
    # Each kill, and each heartbeat late on a loaded machine with a 3 s visibility, hands a message out
    # again: the default 5 receives can go on kills alone. Its dead-letter queue must still end empty.
    set_max_receive_count(sqs_client, url, 4 * KILLS)
    assert url is not None
    env = child_env(AWS_ENDPOINT_URL_SQS=moto_server, AWS_REGION="us-east-1", AWS_KEY="testing", AWS_SECRET="testing")
    logs = tmp_path / "logs"
    started = 0

    def start_worker() -> WorkerProcess:
        nonlocal started
        started += 1
        return WorkerProcess(
            pg_url, url, logs, f"worker{started}", visibility_timeout=VISIBILITY, env=env, decode="inline"
        )

    workers = [start_worker() for _ in range(WORKERS)]
    killed: list[WorkerProcess] = []
    restarted = False
    try:
        for n in range(1, KILLS + 2):
            mark = n * len(bodies) // (KILLS + 3)
            wait_for(lambda m=mark: envelopes(pg_url) >= m, 120, f"{mark} messages committed", 0.02)
            if n <= KILLS:
                slot = n % WORKERS
                victim = workers[slot]
                assert victim.signal(signal.SIGKILL), f"worker {victim.log_path.stem} exited before its kill"
                victim.wait(30)
                killed.append(victim)
                workers[slot] = start_worker()
            else:
                pg_cluster.restart("immediate")  # every worker's connection drops mid-batch
                restarted = True
        codes = [w.wait(240) for w in workers]
        for worker, code in zip(workers, codes, strict=True):
            assert code == 0, f"{worker.log_path.stem} exited {code}: {worker.output()[-3000:]}"
        # Messages a worker held when the last ones exited may still be hidden: one more drain.
        final = start_worker()
        assert final.wait(120) == 0, final.output()[-3000:]
    finally:
        for w in [*workers, *killed]:
            w.stop()
    assert restarted and len(killed) == KILLS and all(w.proc.returncode == -signal.SIGKILL for w in killed)

    stored_events, stored_updates = stored_keys(pg_url)
    lost = expected.events - stored_events.keys()
    doubled = {k: c for k, c in stored_events.items() if c > 1}
    assert not lost, f"{len(lost)} of {len(expected.events)} events lost, e.g. {sorted(lost)[:3]}"
    assert not doubled, f"{len(doubled)} events stored more than once, e.g. {list(doubled.items())[:3]}"
    assert stored_events.keys() == expected.events
    assert stored_updates.keys() == expected.adjustments and set(stored_updates.values()) <= {1}
    assert envelopes(pg_url) == len(bodies)
    assert sqs_depth(sqs_client, url) == (0, 0) and sqs_depth(sqs_client, dlq_url(sqs_client, url)) == (0, 0)
    outputs = "".join(w.output() for w in [*workers, final])
    assert "Traceback" not in outputs
    reconnected = "retrying" in outputs or "unreachable" in outputs
    print(
        f"\n[crash-postgres] events={EVENTS} messages={len(bodies)} kills={len(killed)} restart=1 "
        f"workers_started={started} retry_logged={reconnected}"
    )
