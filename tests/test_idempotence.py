"""The same data, delivered in any order, any number of times, split into messages any way,
ends in the same database (hypothesis over permutations, duplications and re-splits)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.generate import Generator
from chalicelib.queues.local import LocalQueue
from tests.kit import deliver, drain

# A fixed universe: standard events, creates and updates (some before their original).
_gen = Generator(seed=11, offers=3, affiliates=3)
UNIVERSE = _gen.events(60, adjustment_share=0.25, duplicate_share=0.0)
assert any("adjust_action" in e for e in UNIVERSE)

FINGERPRINT = {
    "events": "SELECT * FROM events ORDER BY tune_event_id",
    "adjustments": "SELECT * FROM adjustments ORDER BY adjustment_sequence_id",
    "reconciled": "SELECT * FROM events_reconciled ORDER BY tune_event_id",
    "daily": "SELECT * FROM daily_stats ORDER BY 1, 2, 3, 4",
    "pending": "SELECT adjustment_sequence_id FROM adjustments_pending ORDER BY 1",
}
# Ingestion metadata legitimately differs between runs.
VOLATILE = {"message_id", "ingested_at"}


def fingerprint(db: Path) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    import sqlite3

    conn = sqlite3.connect(db)
    out = {}
    for name, sql in FINGERPRINT.items():
        cur = conn.execute(sql)
        keep = [i for i, d in enumerate(cur.description) if d[0] not in VOLATILE]
        out[name] = [tuple(r[i] for i in keep) for r in cur.fetchall()]
    conn.close()
    return out


def land(messages: list[list[dict]], rounds: int = 1) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        queue = LocalQueue(Path(tmp) / "q.db")
        for chunk in [messages[i::rounds] for i in range(rounds)]:
            if chunk:
                deliver(queue, *chunk)
                drain(queue, Path(tmp) / "f.db")
        queue.close()
        return fingerprint(Path(tmp) / "f.db")


REFERENCE = land([UNIVERSE])


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[list[dict]], int]:  # type: ignore[type-arg]
    order = draw(st.permutations(range(len(UNIVERSE))))
    repeats = draw(st.lists(st.integers(0, len(UNIVERSE) - 1), max_size=30))
    stream = [UNIVERSE[i] for i in [*order, *repeats]]
    stream = draw(st.permutations(stream))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))))
    messages = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if stream[a:b]]
    whole_message_resends = draw(st.lists(st.sampled_from(messages), max_size=3))
    rounds = draw(st.integers(1, 3))  # the worker may drain between deliveries
    return messages + whole_message_resends, rounds


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_any_delivery_ends_in_the_same_database(delivery: tuple[list[list[dict]], int]) -> None:  # type: ignore[type-arg]
    messages, rounds = delivery
    assert land(messages, rounds) == REFERENCE


def test_reference_is_not_trivial() -> None:
    assert len(REFERENCE["events"]) > 30 and len(REFERENCE["adjustments"]) >= 3
    assert REFERENCE["reconciled"] != [r for r in REFERENCE["reconciled"] if r[-5] == 0]  # some events were updated
