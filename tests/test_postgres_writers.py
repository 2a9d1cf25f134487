"""Many writers, one PostgreSQL database: every writer writes the same events, in its own order,
cut into its own batches, all at once. Together they store each event once (0 lost, 0 doubled),
the views give what one SQLite writer gives, and no transaction ever deadlocks.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench.generate import Generator
from db.postgres import partitions
from db.postgres.store import PostgresStore
from tests.test_store_contract import PostgresHarness, SqliteHarness, fingerprint, messages_of, write
from worker.decoders import decode_batch

WRITERS = 4
# Each round races the writers again from empty tables, in new orders.
ROUNDS = 3
NOW = 1_790_100_000
UNIVERSE = Generator(seed=5).events(2_000, adjustment_share=0.05, duplicate_share=0.01)
MESSAGES = messages_of(UNIVERSE, 50)
# Which message brought a key first is a race between the writers, so it is not compared.
COMPARED = ["events", "adjustments", "rejects", "events_reconciled", "daily_stats", "adjustments_pending"]
RACED = frozenset({"message_id"})


def batches_for(writer: int) -> list[Any]:
    """Every message, some twice, shuffled and cut into batches of 10-20 messages (so that the
    writers' transactions overlap in time and in keys, in different orders)."""
    rng = random.Random(writer)
    mine = MESSAGES + rng.sample(MESSAGES, len(MESSAGES) // 4)
    rng.shuffle(mine)
    out, i = [], 0
    while i < len(mine):
        size = rng.randint(10, 20)
        out.append(decode_batch(mine[i : i + size], 32 * 1024 * 1024, NOW))
        i += size
    return out


def race(url: str, work: list[list[Any]]) -> Counter[str]:
    """Each list of batches written by its own store, all starting at once; what they retried."""
    stores = [PostgresStore.open(url) for _ in work]
    start = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def run(store: PostgresStore, batches: list[Any]) -> None:
        start.wait()
        try:
            for b in batches:
                store.write(b)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(stores, work, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    return sum((s.retried for s in stores), start=Counter())


def test_writers_at_once_store_every_event_once_without_deadlocks(pg_url: str, tmp_path: Path) -> None:
    reference = SqliteHarness(tmp_path / "one-writer.db")
    write(reference, decode_batch(MESSAGES, 32 * 1024 * 1024, NOW))
    expected = fingerprint(reference, COMPARED, RACED)
    assert len(expected["events"]) >= 1_800
    pg = PostgresHarness(pg_url)
    pg.open().close()  # the schema, before the race
    if partitions.month_of(NOW) not in partitions.Partitions().ahead():  # not made at open: raced for too
        month = partitions.partition_name(partitions.month_of(NOW))
        assert pg.query(f"SELECT to_regclass('{month}')")[1] == [(None,)]
    for round_ in range(ROUNDS):
        pg.reset()
        retried = race(pg_url, [batches_for(ROUNDS * round_ + w) for w in range(WRITERS)])
        assert retried["40P01"] == 0, f"round {round_}: deadlocks: {retried}"
        found = fingerprint(pg, COMPARED, RACED)
        for name in COMPARED:
            assert found[name] == expected[name], (round_, name)
