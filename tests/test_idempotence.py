"""Idempotence, as a property: whatever the delivery (any order, any number of times, split into
messages any way, drained between deliveries or not), the database ends as if each key's first
valid version had been delivered once.

Each example draws its own stream of events (standard events, creates and updates, some updates
before their original) and mixes in what makes idempotence hard:

- the same key with other content (an event or update re-sent changed): the first delivered wins;
- duplicates within one message and across messages, and whole messages sent again;
- rejects: invalid events, repeated, some sharing a key with a valid version.

The invariant, checked on every example:
- each stored row holds the first valid version of its key in delivery order;
- the database (events, adjustments and the analyst views) equals the one built by landing those
  winners once, in one message, in a fresh database;
- every distinct invalid event is one reject row, however often it came.

60 examples by default; FIREHOSE_FUZZ=1 runs 1,000.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.generate import Generator
from chalicelib.queues.local import LocalQueue
from tests.kit import deliver, drain

EXAMPLES = 1_000 if os.environ.get("FIREHOSE_FUZZ") == "1" else 60

FINGERPRINT = {
    "events": "SELECT * FROM events ORDER BY tune_event_id",
    "adjustments": "SELECT * FROM adjustments ORDER BY adjustment_sequence_id",
    "reconciled": "SELECT * FROM events_reconciled ORDER BY tune_event_id",
    "daily": "SELECT * FROM daily_stats ORDER BY 1, 2, 3, 4",
    "pending": "SELECT adjustment_sequence_id FROM adjustments_pending ORDER BY 1",
}
# Ingestion metadata legitimately differs between runs.
VOLATILE = {"message_id", "ingested_at"}
INVALID = "invalid"  # the `note` of every event built to be rejected

Event = dict[str, Any]


def is_update(event: Event) -> bool:
    return str(event.get("adjust_action", "")).strip().lower() in ("2", "update")


def key_of(event: Event) -> tuple[str, str | int]:
    if is_update(event):
        return "adjustments", event["adjustment_sequence_id"]
    return "events", str(event["tune_event_id"])


def is_valid(event: Event) -> bool:
    return event.get("note") != INVALID


def invalid_events(base: list[Event]) -> list[Event]:
    """Events the worker must reject, each for another reason; the last two share a key with a
    valid event."""
    bad: list[Event] = [
        {"action": "click", "tune_event_id": "bad-payout", "payout": "ten", "note": INVALID},
        {"tune_event_id": "bad-no-action", "note": INVALID},
        {"action": "click", "adjust_action": "sideways", "tune_event_id": "bad-adjust", "note": INVALID},
        {"action": "conversion", "adjust_action": 2, "tune_event_id": "bad-update", "note": INVALID},
    ]
    standard = next(e for e in base if not is_update(e))
    bad.append({**standard, "payout": "a lot", "note": INVALID})
    update = next((e for e in base if is_update(e)), None)
    if update is not None:
        bad.append({**update, "adjustment_sequence_id": "not a number", "note": INVALID})
    return bad


def changed(event: Event, n: int) -> Event:
    """The same key with other content."""
    return {**event, "payout": round(float(event.get("payout") or 0) + n + 0.25, 2), "aff_sub": f"resent-{n}"}


def fingerprint(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with closing(sqlite3.connect(db)) as conn:
        for name, sql in FINGERPRINT.items():
            cur = conn.execute(sql)
            keep = [i for i, d in enumerate(cur.description) if d[0] not in VOLATILE]
            out[name] = [tuple(r[i] for i in keep) for r in cur.fetchall()]
    return out


def stored_versions(db: Path) -> dict[tuple[str, str | int], Event]:
    with closing(sqlite3.connect(db)) as conn:
        rows = [("events", k, raw) for k, raw in conn.execute("SELECT tune_event_id, raw_json FROM events")]
        rows += [
            ("adjustments", k, raw)
            for k, raw in conn.execute("SELECT adjustment_sequence_id, raw_json FROM adjustments")
        ]
    return {(table, key): json.loads(raw) for table, key, raw in rows}


def reject_keys(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return sorted(k for (k,) in conn.execute("SELECT reject_key FROM rejects"))


@contextmanager
def landed(messages: list[list[Event]], rounds: int = 1) -> Iterator[Path]:
    """The database after sending `messages` round by round (message i in round i % rounds) and
    draining the queue after each round."""
    with tempfile.TemporaryDirectory() as tmp:
        queue = LocalQueue(Path(tmp) / "q.db")
        for chunk in [messages[i::rounds] for i in range(rounds)]:
            if chunk:
                deliver(queue, *chunk)
                drain(queue, Path(tmp) / "f.db")
        queue.close()
        yield Path(tmp) / "f.db"


def delivery_order(messages: list[list[Event]], rounds: int) -> list[Event]:
    return [e for i in range(rounds) for message in messages[i::rounds] for e in message]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[list[Event]], int]:
    gen = Generator(seed=draw(st.integers(0, 2**32)), offers=3, affiliates=3)
    base = gen.events(draw(st.integers(8, 40)), adjustment_share=0.25, duplicate_share=0.0)
    resent = draw(st.lists(st.sampled_from(base), max_size=4))
    universe = base + [changed(e, n) for n, e in enumerate(resent)]
    universe += draw(st.lists(st.sampled_from(invalid_events(base)), max_size=6))
    repeats = draw(st.lists(st.integers(0, len(universe) - 1), max_size=20))
    stream = draw(st.permutations([*universe, *(universe[i] for i in repeats)]))
    for at in draw(st.lists(st.integers(0, len(stream) - 1), max_size=3)):  # side by side: one message
        stream.insert(at, stream[at])
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))))
    messages = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if stream[a:b]]
    messages += draw(st.lists(st.sampled_from(messages), max_size=3))  # whole messages sent again
    return messages, draw(st.integers(1, 3))


def check_delivery(messages: list[list[Event]], rounds: int) -> None:
    order = delivery_order(messages, rounds)
    winners: dict[tuple[str, str | int], Event] = {}
    for event in order:
        if is_valid(event):
            winners.setdefault(key_of(event), event)
    invalid = list({json.dumps(e, sort_keys=True): e for e in order if not is_valid(e)}.values())
    with landed(messages, rounds) as db:
        got, got_versions, got_rejects = fingerprint(db), stored_versions(db), reject_keys(db)
    lost = winners.keys() - got_versions.keys()
    assert not lost, f"keys lost: {sorted(map(str, lost))[:3]}"
    assert got_versions.keys() == winners.keys(), "a row stored for a key never validly offered"
    later = [k for k, event in winners.items() if got_versions[k] != json.loads(json.dumps(event))]
    assert not later, f"not the first version delivered: {sorted(map(str, later))[:3]}"
    with landed([list(winners.values()) + invalid]) as reference:
        assert got == fingerprint(reference)
        assert got_rejects == reject_keys(reference)
    assert len(got_rejects) == len(invalid), f"{len(invalid)} distinct invalid events, {len(got_rejects)} rejects"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_any_delivery_ends_as_the_first_versions_delivered_once(delivery: tuple[list[list[Event]], int]) -> None:
    check_delivery(*delivery)


def test_every_hard_case_at_once() -> None:
    """One delivery with each hard case, so each is exercised whatever hypothesis draws."""
    base = Generator(seed=11, offers=3, affiliates=3).events(60, adjustment_share=0.25, duplicate_share=0.0)
    standard = next(e for e in base if not is_update(e))
    update = next(e for e in base if is_update(e))
    bad = invalid_events(base)
    messages = [
        [changed(standard, 1), *base[:10], base[3], base[3]],  # the change first, then the original
        [*base[10:], changed(update, 2), *bad],  # the update's change after the original
        [*bad[:2], standard, update],  # rejects and originals again
        [*base[:10]],
    ]
    assert any(len(m) != len({json.dumps(e, sort_keys=True) for e in m}) for m in messages)
    check_delivery(messages, rounds=2)
    with landed(messages, rounds=2) as db:
        versions = stored_versions(db)
        assert versions[key_of(standard)]["aff_sub"] == "resent-1"  # delivered first, so it won
        assert versions[key_of(update)] == update
        assert len(reject_keys(db)) == len(bad)
