"""One contract, two backends: the local queue must behave like SQS (moto over HTTP)."""

from __future__ import annotations

import time

from chalicelib.queues.base import Queue
from chalicelib.queues.local import LocalQueue


def drain(queue: Queue, wait: float = 1, visibility: int = 30) -> list:
    got = []
    while True:
        batch = queue.receive(10, wait, visibility)
        if not batch:
            return got
        got.extend(batch)


def test_send_receive_delete(any_queue: Queue) -> None:
    result = any_queue.send_all([f"body-{i}" for i in range(25)])
    assert result.ok and len(result.message_ids) == 25 and len(set(result.message_ids)) == 25
    messages = drain(any_queue)
    assert sorted(m.body for m in messages) == sorted(f"body-{i}" for i in range(25))
    assert all(m.receive_count == 1 for m in messages)
    assert len({m.receipt for m in messages}) == 25
    assert any_queue.delete([m.receipt for m in messages]) == []
    assert any_queue.receive(10, 0, 1) == []


def test_receive_returns_at_most_ten(any_queue: Queue) -> None:
    any_queue.send_all([str(i) for i in range(15)])
    assert 1 <= len(any_queue.receive(10, 1, 30)) <= 10


def test_long_poll_waits_then_returns_empty(any_queue: Queue) -> None:
    started = time.monotonic()
    assert any_queue.receive(10, 1, 30) == []
    assert time.monotonic() - started >= 0.9  # it did wait (a behaviour, not a speed)


def test_visibility_expiry_redelivers_with_count(any_queue: Queue) -> None:
    any_queue.send_all(["again"])
    first = any_queue.receive(1, 1, 1)
    assert [m.body for m in first] == ["again"] and first[0].receive_count == 1
    assert any_queue.receive(1, 0, 1) == []  # hidden inside its visibility window
    time.sleep(1.2)
    second = any_queue.receive(1, 2, 30)
    assert [m.body for m in second] == ["again"]
    assert second[0].message_id == first[0].message_id
    assert second[0].receive_count == 2
    assert second[0].receipt != first[0].receipt
    assert any_queue.delete([second[0].receipt]) == []


def test_change_visibility_hides_longer(any_queue: Queue) -> None:
    any_queue.send_all(["slow"])
    [m] = any_queue.receive(1, 1, 1)
    assert any_queue.change_visibility([m.receipt], 5) == []
    time.sleep(1.3)
    assert any_queue.receive(1, 0, 1) == []
    assert any_queue.change_visibility([m.receipt], 0) == []
    [again] = any_queue.receive(1, 2, 30)
    assert again.body == "slow"


def test_depth_counts_visible_and_in_flight(any_queue: Queue) -> None:
    any_queue.send_all(["a", "b", "c"])
    any_queue.receive(1, 1, 30)
    depth = any_queue.depth()
    assert (depth.visible, depth.in_flight) == (2, 1)


def test_poison_message_moves_to_dead_letters_after_max_receives(any_queue: Queue, request) -> None:  # type: ignore[no-untyped-def]
    """maxReceiveCount is 5 on both: the sixth receive moves it aside, the next message still flows."""
    any_queue.send_all(["poison"])
    for attempt in range(1, 6):
        got = any_queue.receive(1, 2, 0) if attempt > 1 else any_queue.receive(1, 1, 0)
        assert [m.body for m in got] == ["poison"], attempt
        assert got[0].receive_count == attempt
    any_queue.send_all(["healthy"])
    seen = [m.body for m in drain(any_queue, wait=1)]
    assert seen == ["healthy"]
    assert any_queue.depth().dead == 1


def test_oversized_message_is_refused_not_truncated(any_queue: Queue) -> None:
    limit = any_queue.max_message_bytes()
    result = any_queue.send_all(["ok", "x" * (limit + 1)])
    assert [i for i, _ in result.failed] == [1]
    assert [m.body for m in drain(any_queue)] == ["ok"]


def test_local_stale_receipt_cannot_delete(local_queue: LocalQueue) -> None:
    local_queue.send_all(["m"])
    [first] = local_queue.receive(1, 0, 0)
    [second] = local_queue.receive(1, 0, 30)
    assert local_queue.delete([first.receipt]) == [first.receipt]
    assert local_queue.delete([second.receipt]) == []


def _dead_letter(queue: Queue, bodies: list[str]) -> None:
    """Receive `bodies` until the queue moves them all to its dead-letter queue (maxReceiveCount 5)."""
    queue.send_all(bodies)
    for _ in range(12):
        if queue.depth().dead == len(bodies):
            return
        queue.receive(10, 1, 0)
    raise AssertionError(f"not dead-lettered: {queue.depth()}")


def test_redrive_returns_dead_letters_with_a_fresh_count(any_queue: Queue) -> None:
    assert any_queue.redrive().moved == 0  # nothing dead: nothing to do
    _dead_letter(any_queue, ["p"])
    steps: list[int] = []
    result = any_queue.redrive(on_moved=steps.append)
    assert (result.moved, result.failed) == (1, 0) and sum(steps) == 1
    assert any_queue.depth().dead == 0
    [m] = any_queue.receive(1, 1, 30)
    assert m.body == "p" and m.receive_count == 1
    assert any_queue.delete([m.receipt]) == []


def test_redrive_moves_at_most_the_limit(any_queue: Queue) -> None:
    bodies = [f"dead-{i}" for i in range(3)]
    _dead_letter(any_queue, bodies)
    assert any_queue.redrive(limit=2).moved == 2
    assert any_queue.depth().dead == 1
    assert any_queue.redrive().moved == 1
    depth = any_queue.depth()
    assert (depth.visible, depth.dead) == (3, 0)
    assert sorted(m.body for m in drain(any_queue)) == bodies


def test_local_queue_is_shared_by_processes_without_double_delivery(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Producers and consumers in separate processes: every message handed out exactly once."""
    import subprocess
    import sys

    path = tmp_path / "shared.db"
    LocalQueue(path).close()
    producer = (
        "import sys; from chalicelib.queues.local import LocalQueue; q = LocalQueue(sys.argv[1]); "
        "[q.send_all([f'{sys.argv[2]}-{i}-{j}' for j in range(10)]) for i in range(30)]"
    )
    consumer = (
        "import sys; from chalicelib.queues.local import LocalQueue; q = LocalQueue(sys.argv[1]); idle = 0\n"
        "while idle < 20:\n"
        "    got = q.receive(10, 0.1, 60)\n"
        "    idle = 0 if got else idle + 1\n"
        "    [print(m.body, flush=True) for m in got]\n"
        "    q.delete([m.receipt for m in got])\n"
    )
    root = str(__import__("pathlib").Path(__file__).parent.parent)
    procs = [subprocess.Popen([sys.executable, "-c", producer, str(path), f"p{n}"], cwd=root) for n in range(2)]
    readers = [
        subprocess.Popen([sys.executable, "-c", consumer, str(path)], cwd=root, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for p in procs:
        assert p.wait(60) == 0
    outputs = [r.communicate(timeout=120)[0].split() for r in readers]
    seen = [body for out in outputs for body in out]
    assert len(seen) == len(set(seen)) == 2 * 30 * 10
    assert LocalQueue(path).depth().visible == 0
