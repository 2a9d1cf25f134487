"""Issue 5, item 6: queue faults, injected at the HTTP level between boto3 and moto.

A FaultProxy (tests/faultkit.py) sits between the producer/worker and moto. It answers with
503s, 500s and throttling errors, cuts connections before or after forwarding a call, goes
through a storm where every call fails, and stops listening for a while (connections refused).
Every delete request that reaches it, faulted or not, is checked on arrival: the events of the
messages it names must already be committed (tests/invariants.py). Separately, the moto server
itself is stopped and started again mid-run, behind the same checking proxy. Both decoders.

Checked: retries are bounded and back off (a storm does not turn into a request flood, one call
makes at most max_attempts requests), no message is deleted before its events are committed,
and nothing is lost.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from bench.generate import Generator
from chalicelib.errors import QueueUnavailable
from chalicelib.queues.sqs import SqsQueue, make_client
from chalicelib.settings import load_settings
from tests.faultkit import (
    DROP,
    INTERNAL,
    LOST,
    PASS,
    THROTTLE,
    UNAVAILABLE,
    Expected,
    FaultProxy,
    WorkerProcess,
    assert_exactly_once,
    free_port,
    pack,
    read_only,
)
from tests.invariants import SqsHarness
from tests.kit import make_sqs_queue

MAX_ATTEMPTS = 6  # make_client's retries={"max_attempts": 5} means 5 retries: 6 requests in all


# Each operation first meets every kind of fault once, then random ones.
SCRIPT = [UNAVAILABLE, PASS, THROTTLE, PASS, INTERNAL, PASS, DROP, PASS, LOST, PASS]


class Faults:
    """The proxy's fault plan: scripted then random faults, a storm of 503s, or nothing."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.mode = "random"
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def __call__(self, target: str) -> str:
        with self.lock:
            if self.mode == "storm":
                return UNAVAILABLE
            if self.mode == "clear":
                return PASS
            n = self.calls[target] = self.calls.get(target, 0) + 1
            if n <= len(SCRIPT):
                return SCRIPT[n - 1]
            roll = self.rng.random()
        if roll < 0.12:
            return UNAVAILABLE
        if roll < 0.20:
            return THROTTLE
        if roll < 0.24:
            return INTERNAL
        if roll < 0.28:
            return DROP
        if roll < 0.32:
            return LOST
        return PASS


def _sqs_settings(url: str, endpoint: str) -> Any:
    return load_settings(
        {"QUEUE_URL": url, "AWS_ENDPOINT_URL_SQS": endpoint, "AWS_REGION": "us-east-1"}, dotenv_path=None
    )


def _send_until_accepted(queue: SqsQueue, bodies: list[str]) -> int:
    """What a producer does on 503: resend what failed. Returns the number of send attempts."""
    attempts = 0
    for start in range(0, len(bodies), 10):
        pending = bodies[start : start + 10]
        while pending:
            attempts += 1
            assert attempts < 500, "the queue never accepted the messages"
            result = queue.send_all(pending)
            pending = [pending[i] for i, _ in result.failed]
            if pending:
                time.sleep(0.2)
    return attempts


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["inline", "process"])
def test_worker_under_http_faults_deletes_only_after_commit_and_loses_nothing(
    tmp_path: Path, moto_server: str, decoder: str
) -> None:
    events = Generator(61).events(10_000)
    expected = Expected.of(events)
    packed = pack(events, 100)
    db_path = tmp_path / "firehose.db"
    faults = Faults(61)
    h = SqsHarness(moto_server, db_path, f"faults-{time.time_ns()}", decide=faults, max_receive_count=10)
    proxy = h.proxy
    try:
        # The producer side: SqsQueue.send_all through the faults, resending what failed.
        producer = SqsQueue(h.url, make_client(_sqs_settings(h.url, proxy.url)))
        send_attempts = _send_until_accepted(producer, [body for body, _ in packed])
        producer.close()

        worker = WorkerProcess(db_path, h.url, tmp_path, visibility_timeout=5, env=h.env(), decode=decoder)
        try:
            h.wait_for(lambda: h.checked() > 0 or not worker.alive(), 120, "the first delete")
            # A storm: every call fails for 4 s.
            with faults.lock:
                faults.mode = "storm"
            storm_start = time.monotonic()
            time.sleep(4)
            storm_end = time.monotonic()
            with faults.lock:
                faults.mode = "random"
            storm_requests = proxy.count(storm_start, storm_end)
            # Then nothing listens for 3 s: connections are refused.
            proxy.refuse()
            time.sleep(3)
            proxy.accept()
            rc = h.wait(worker, 300)
        finally:
            worker.stop()
        output = worker.output()
        got = assert_exactly_once(db_path, expected)
        assert h.depth() == (0, 0, 0)
        checked = h.checked()
    finally:
        h.close()

    assert rc == 0, output[-3000:]
    assert checked >= len(packed)  # every delete request, faulted or not, was checked on arrival
    assert storm_requests <= 40, f"{storm_requests} requests in a 4 s storm: retries do not back off"
    injected = {a: proxy.count(action=a) for a in (UNAVAILABLE, THROTTLE, INTERNAL, DROP, LOST)}
    assert all(injected.values()), injected
    for operation in ("SendMessageBatch", "ReceiveMessage", "DeleteMessageBatch"):
        assert faults.calls.get(operation, 0) >= len(SCRIPT), f"{operation} did not meet every kind of fault"
    print(
        f"\n[queue-faults:{decoder}] requests={len(proxy.log)} injected={injected} storm_requests={storm_requests} "
        f"send_attempts={send_attempts} deletes_checked={checked} events={expected.offered} "
        f"redelivered_messages={sum(1 for c in got.envelopes.values() if (c or 1) > 1)} lost=0"
    )


def test_one_call_makes_a_bounded_number_of_attempts(moto_server: str) -> None:
    """Every call fails: each SqsQueue verb gives up with QueueUnavailable after at most
    max_attempts HTTP requests per batch call, instead of retrying for ever."""
    client = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    url, _ = make_sqs_queue(client, f"bounded-{time.time_ns()}")
    proxy = FaultProxy(moto_server, lambda target: UNAVAILABLE)
    queue = SqsQueue(url, make_client(_sqs_settings(url, proxy.url)))
    try:
        with pytest.raises(QueueUnavailable):
            queue.receive(10, 0, 30)
        receives = proxy.count()
        assert 1 < receives <= MAX_ATTEMPTS, f"receive made {receives} requests"
        failed = queue.delete(["a-receipt"])
        assert failed == ["a-receipt"]
        deletes = proxy.count() - receives
        assert 1 < deletes <= MAX_ATTEMPTS * 4, f"delete made {deletes} requests"  # 1 try + 3 entry retries
    finally:
        queue.close()
        proxy.close()


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["inline", "process"])
def test_moto_restarted_mid_run(tmp_path: Path, decoder: str) -> None:
    """The SQS server goes away (connections refused) and comes back with its state; the worker
    rides it out and lands everything once. The checking proxy stays up in front of it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    db_path = tmp_path / "firehose.db"
    h = SqsHarness(endpoint, db_path, f"restart-{time.time_ns()}")
    try:
        events = Generator(62).events(10_000)
        expected = Expected.of(events)
        bodies = [body for body, _ in pack(events, 100)]
        for start in range(0, len(bodies), 10):
            assert h.queue.send_all(bodies[start : start + 10]).ok
        worker = WorkerProcess(db_path, h.url, tmp_path, visibility_timeout=5, env=h.env(), decode=decoder)
        try:
            h.wait_for(lambda: (db_path.exists() and _events(db_path) > 0) or not worker.alive(), 120, "progress")
            server.stop()
            assert server._server is not None
            server._server.server_close()  # really stop listening: connections are refused
            with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
            time.sleep(4)
            assert worker.alive(), worker.output()[-3000:]
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            rc = h.wait(worker, 300)
        finally:
            worker.stop()
        assert rc == 0, worker.output()[-3000:]
        assert_exactly_once(db_path, expected)
        assert h.depth() == (0, 0, 0)
        assert h.checked() >= len(bodies)
    finally:
        h.close()
        server.stop()


def _events(db_path: Path) -> int:
    try:
        with contextlib.closing(read_only(db_path)) as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    except Exception:
        return 0


class _FlakyDepth:
    """A local queue whose depth() fails a few times, as GetQueueAttributes does during an outage."""

    def __init__(self, queue: Any, failures: int) -> None:
        self.queue, self.failures = queue, failures
        self.backend = queue.backend

    def depth(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise QueueUnavailable("SQS get_queue_attributes failed: ServiceUnavailable")
        return self.queue.depth()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


def test_until_empty_survives_a_failing_depth_check(local_queue: Any, tmp_path: Path) -> None:
    """--until-empty asks for the queue depth before it exits; an outage then must not crash it."""
    from db.store import Store
    from worker.loop import Limits, Worker

    events = Generator(63).events(500)
    for body, _ in pack(events, 100):
        assert local_queue.send_all([body]).ok
    store = Store.open(tmp_path / "firehose.db")
    worker = Worker(_FlakyDepth(local_queue, 3), store, Limits(wait_seconds=0.1), out=None)  # type: ignore[arg-type]
    worker._sleep = lambda seconds: None  # type: ignore[method-assign]
    assert worker.run(until_empty=True) == 0
    store.close()
    assert_exactly_once(tmp_path / "firehose.db", Expected.of(events))


class _DownQueue:
    """A queue that is unreachable: every call raises QueueUnavailable, and each is counted."""

    backend = "sqs"

    def __init__(self) -> None:
        self.calls = 0

    def receive(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise QueueUnavailable("SQS receive_message failed: ServiceUnavailable (retries exhausted)")

    depth = delete = change_visibility = receive

    def close(self) -> None:
        pass


def test_worker_backs_off_while_the_queue_is_down(tmp_path: Path) -> None:
    """When even botocore's retries give up, the worker's own loop waits longer and longer
    between attempts (1 s, 2 s, 4 s...) instead of spinning: over about 4 s, a handful of calls."""
    from db.store import Store
    from worker.loop import Limits, Worker

    queue = _DownQueue()
    store = Store.open(tmp_path / "firehose.db")
    worker = Worker(queue, store, Limits(wait_seconds=0.1), out=None)  # type: ignore[arg-type]
    previous = signal.signal(signal.SIGUSR1, worker.request_stop)  # as SIGTERM would, in the main thread
    timer = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        assert worker.run() == 0
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
        store.close()
    assert 2 <= queue.calls <= 6, f"{queue.calls} calls to a queue that was down for 4 s"
