"""The store contract: what both stores promise, run against SQLite and PostgreSQL alike.

- The same tables, views and columns, and the same rows and view results from the same batches.
- Idempotence: a batch, a message or an event written again changes nothing.
- Reconciliation: every update counts once against its event, or waits in adjustments_pending.
- Rejects: what cannot be stored is one reject row, however often it arrives.
- Migrations: a fresh database gets every version; a newer one is refused; workers starting
  together migrate once.
- Any delivery (order, duplication, split into messages and batches) ends in the same database.

PostgreSQL's results come back in its own types (numeric, timestamptz); `plain` compares them
with SQLite's by value: the same number, the same UTC second.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.generate import Generator, sample_envelope
from db.batch import Rows
from db.errors import SchemaTooNew
from db.schema import LATEST_VERSION as SQLITE_LATEST
from db.schema import migrate as sqlite_migrate
from db.store import Store, WriteStats
from tests.kit import tune_message
from worker.coerce import to_micros
from worker.decoders import decode_batch

FUZZ = os.environ.get("FIREHOSE_FUZZ") == "1"
NOW = 1_790_100_000
MAX_DECODED = 32 * 1024 * 1024
DATA_TABLES = ("events", "adjustments", "envelopes", "rejects")


def _sqlite_views() -> list[str]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    sqlite_migrate(db)
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")]
    db.close()
    return names


VIEWS = _sqlite_views()


def plain(value: Any) -> Any:
    """A value as both stores can be compared on: numbers by value, times as ISO-8601 UTC text."""
    if isinstance(value, datetime):
        t = value.astimezone(UTC)
        return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# -- the two stores, behind one small harness ---------------------------------------------------


class SqliteHarness:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> Any:
        return Store.open(self.path)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        db = sqlite3.connect(self.path)
        try:
            cur = db.execute(sql)
            return [d[0] for d in cur.description], cur.fetchall()
        finally:
            db.close()

    def execute(self, sql: str) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(sql)
        finally:
            db.close()

    def reset(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def version(self) -> int:
        return int(self.query("PRAGMA user_version")[1][0][0])

    def pretend_version(self, version: int) -> None:
        self.execute(f"PRAGMA user_version = {int(version)}")

    latest = SQLITE_LATEST


class PostgresHarness:
    kind = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self) -> Any:
        from db.postgres.store import PostgresStore

        return PostgresStore.open(self.url)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        import psycopg

        with psycopg.connect(self.url) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]  # test SQL, written here
            return [d.name for d in cur.description or []], cur.fetchall()

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def reset(self) -> None:
        # DELETE, not TRUNCATE: these tables hold a few hundred rows, and TRUNCATE makes new files
        # for every partition and index.
        for table in DATA_TABLES:
            self.execute(f"DELETE FROM {table}")

    def version(self) -> int:
        return int(self.query("SELECT max(version) FROM firehose_migrations")[1][0][0])

    def pretend_version(self, version: int) -> None:
        self.execute(f"INSERT INTO firehose_migrations (version, name) VALUES ({int(version)}, 'from the future')")

    @property
    def latest(self) -> int:
        from db.postgres.schema import LATEST_VERSION

        return LATEST_VERSION


Harness = SqliteHarness | PostgresHarness


@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "sqlite":
        return SqliteHarness(tmp_path / "f.db")
    return PostgresHarness(request.getfixturevalue("pg_url"))


@pytest.fixture()
def both(tmp_path: Path, pg_url: str) -> tuple[SqliteHarness, PostgresHarness]:
    return SqliteHarness(tmp_path / "f.db"), PostgresHarness(pg_url)


def write(harness: Harness, *batches: Rows) -> list[WriteStats]:
    store = harness.open()
    try:
        return [store.write(b) for b in batches]
    finally:
        store.close()


def fingerprint(harness: Harness, names: list[str], leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every row of these tables and views, as plain values, in a fixed order."""
    out: dict[str, Any] = {}
    for name in names:
        columns, rows = harness.query(f"SELECT * FROM {name}")
        keep = [i for i, c in enumerate(columns) if c not in leave_out]
        out[name] = sorted((tuple(plain(r[i]) for i in keep) for r in rows), key=repr)
    return out


def messages_of(events: list[Any], per_message: int, start: int = 0) -> list[tuple[str, str, int]]:
    return [
        (f"m{start + i}", tune_message(events[j : j + per_message]), 1)
        for i, j in enumerate(range(0, len(events), per_message))
    ]


def sample_batch() -> Rows:
    """sample-data's events (every kind the pipeline handles), an undecodable message, and events
    that must become rejects, in one batch."""
    envelope = sample_envelope()
    bad = [{"action": "conversion", "tune_event_id": "bad-money", "payout": "a lot"}, {"no": "action"}]
    items = [
        ("sample", json.dumps(envelope), 1),
        ("garbage", "H4sI-not-really-gzip", 1),
        ("bad", tune_message(bad), 2),
    ]
    return decode_batch(items, MAX_DECODED, NOW)


# -- the same schema and the same results -------------------------------------------------------


def test_both_stores_have_the_same_tables_views_and_columns(both: tuple[SqliteHarness, PostgresHarness]) -> None:
    sqlite_h, pg = both
    for h in both:
        h.open().close()
    assert {"events_reconciled", "daily_stats", "adjustments_pending"} <= set(VIEWS)
    for name in [*DATA_TABLES, *VIEWS]:
        sql = f"SELECT * FROM {name} LIMIT 0"
        assert pg.query(sql)[0] == sqlite_h.query(sql)[0], name


def test_the_same_batch_gives_the_same_rows_and_view_results_in_both(
    both: tuple[SqliteHarness, PostgresHarness],
) -> None:
    batch = sample_batch()
    assert batch.rejects and batch.adjustments
    for h in both:
        write(h, batch)
    sqlite_h, pg = both
    names = [*DATA_TABLES, *VIEWS]
    expected, found = fingerprint(sqlite_h, names), fingerprint(pg, names)
    for name in names:
        assert found[name] == expected[name], name
    assert all(expected[name] for name in ("events", "adjustments", "rejects", "events_reconciled", "daily_stats"))


def extremes_batch() -> Rows:
    """Values at the bounds the worker stores: the largest and smallest money and counts, the
    smallest fraction, the first and last representable days, no time, no currency, two
    currencies, updates of the largest event and of one never seen."""
    big, small, n = "1000000000", "-1000000000", 10**6

    def conversion(key: str, amount: str, num: int) -> dict[str, Any]:
        return {
            "action": "conversion",
            "tune_event_id": key,
            "datetime": NOW,
            "payout": amount,
            "revenue": amount,
            "num": num,
        }

    def click(key: str, when: Any, **more: Any) -> dict[str, Any]:
        return {"action": "click", "tune_event_id": key, "datetime": when, "currency": "USD", **more}

    def update(seq: int, key: str) -> dict[str, Any]:
        return {
            "action": "conversion", "adjust_action": "update", "tune_event_id": key, "adjustment_sequence_id": seq,
            "adjustment_timestamp": NOW + seq, "num": -1, "payout": small, "revenue": "-0.000001", "status": "rejected",
        }  # fmt: skip

    events = [
        conversion("max", big, n),
        conversion("min", small, -n),
        click("micro", NOW, payout="0.000001", currency="EUR"),
        click("first-day", "0001-01-01 00:00:00"),
        click("last-day", "9999-12-31 23:59:59"),
        {"action": "impression", "tune_event_id": "timeless", "currency": None, "payout": "0.5"},
        update(1, "max"),
        update(2, "max"),
        update(3, "nobody"),
    ]
    return decode_batch([("extremes", tune_message(events), 1)], MAX_DECODED, NOW)


def test_values_at_the_bounds_give_the_same_rows_and_view_results_in_both(
    both: tuple[SqliteHarness, PostgresHarness],
) -> None:
    batch = extremes_batch()
    assert len(batch.events) == 6 and len(batch.adjustments) == 3 and not batch.rejects
    for h in both:
        write(h, batch)
    names = [*DATA_TABLES, *VIEWS]
    expected, found = (fingerprint(h, names) for h in both)
    for name in names:
        assert found[name] == expected[name], name


def documented_queries() -> list[str]:
    """The analysts' queries of docs/data.md, as tests/test_analyst_docs.py finds them."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "data.md").read_text()
    section = text.split("## Querying the data", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_the_documented_queries_run_unchanged_on_both_with_the_same_results(
    both: tuple[SqliteHarness, PostgresHarness],
) -> None:
    for h in both:
        write(h, sample_batch())
    queries = documented_queries()
    assert len(queries) >= 5
    for query in queries:
        expected, found = ([tuple(map(plain, r)) for r in h.query(query)[1]] for h in both)
        # Row order is compared only where it is determined: PostgreSQL sorts NULL last, SQLite first.
        assert sorted(found, key=repr) == sorted(expected, key=repr), query
        assert expected, query


# -- idempotence, reconciliation, rejects -------------------------------------------------------


def test_a_batch_written_again_changes_nothing(harness: Harness) -> None:
    batch = sample_batch()
    first, again = write(harness, batch, batch)
    assert first.events > 90 and first.adjustments >= 4 and first.rejects >= 3
    # sample-data repeats two events and one update within its own envelope
    assert (first.duplicates, first.duplicate_adjustments) == (2, 1)
    assert again == WriteStats(
        events=0,
        duplicates=len(batch.events),
        adjustments=0,
        duplicate_adjustments=len(batch.adjustments),
        rejects=0,
    )
    before = fingerprint(harness, [*DATA_TABLES, *VIEWS])
    write(harness, batch)
    assert fingerprint(harness, [*DATA_TABLES, *VIEWS]) == before


def test_every_update_counts_once_against_its_event_or_waits_in_pending(harness: Harness) -> None:
    events = sample_envelope()["events"]
    write(harness, sample_batch())
    originals = {e["tune_event_id"] for e in events if str(e.get("adjust_action", "")).lower() not in ("2", "update")}
    updates = [e for e in events if str(e.get("adjust_action", "")).lower() in ("2", "update")]
    by_sequence = {u["adjustment_sequence_id"]: u for u in updates}  # a repeated update counts once
    waiting = {u["tune_event_id"] for u in by_sequence.values() if u["tune_event_id"] not in originals}
    assert waiting and len(waiting) < len(by_sequence)  # the sample has both kinds

    _, pending = harness.query("SELECT tune_event_id FROM adjustments_pending")
    assert {r[0] for r in pending} == waiting
    _, gross = harness.query("SELECT tune_event_id, coalesce(payout_micros, 0) FROM events")
    _, reconciled = harness.query("SELECT tune_event_id, payout, updates FROM events_reconciled")
    gross_micros = dict(gross)
    assert len(reconciled) == len(gross_micros)
    for key, payout, count in reconciled:
        mine = [u for u in by_sequence.values() if u["tune_event_id"] == key]
        net_micros = gross_micros[key] + sum(to_micros(u["payout"], "payout") or 0 for u in mine)
        assert plain(count) == len(mine), key
        assert plain(payout) == plain(Decimal(net_micros) / 1_000_000), key


def test_what_cannot_be_stored_is_one_reject_row_however_often_it_arrives(harness: Harness) -> None:
    batch = sample_batch()
    write(harness, batch)
    write(harness, batch, decode_batch([("garbage-again", "H4sI-not-really-gzip", 3)], MAX_DECODED, NOW + 60))
    _, rows = harness.query("SELECT message_id, event_index, reason FROM rejects ORDER BY reason")
    reasons = [r[2] for r in rows]
    assert len(rows) == len(batch.rejects) == 3
    assert any("undecodable" in r for r in reasons) and any("payout" in r for r in reasons)
    _, kept = harness.query("SELECT count(*) FROM events WHERE message_id = 'bad'")
    assert kept[0][0] == 0
    _, envelopes = harness.query("SELECT message_id FROM envelopes ORDER BY message_id")
    assert [r[0] for r in envelopes] == ["bad", "garbage", "garbage-again", "sample"]


# -- migrations ---------------------------------------------------------------------------------


def test_a_fresh_database_gets_every_migration_once(harness: Harness) -> None:
    store = harness.open()
    assert set(store.counts()) == set(DATA_TABLES)
    store.close()
    harness.open().close()
    assert harness.version() == harness.latest


def test_a_database_newer_than_the_code_is_refused(harness: Harness) -> None:
    harness.open().close()
    harness.pretend_version(harness.latest + 1)
    with pytest.raises(SchemaTooNew, match=f"version {harness.latest + 1} is newer than this tune-firehose"):
        harness.open()


def test_workers_starting_together_migrate_once(harness: Harness) -> None:
    workers = 6
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            harness.open().close()
        except BaseException as exc:  # any failure fails the test below, with its cause
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert harness.version() == harness.latest
    if isinstance(harness, PostgresHarness):
        _, applied = harness.query("SELECT version FROM firehose_migrations ORDER BY version")
        assert [r[0] for r in applied] == list(range(1, harness.latest + 1))


# -- any delivery ends in the same database -----------------------------------------------------

_gen = Generator(seed=11, offers=3, affiliates=3)
UNIVERSE = _gen.events(60, adjustment_share=0.25, duplicate_share=0.0)
# Ingestion metadata legitimately differs between deliveries: which message brought a key first,
# and how the envelopes were cut.
VOLATILE = frozenset({"message_id"})
COMPARED = ["events", "adjustments", *VIEWS]


@st.composite
def deliveries(draw: st.DrawFn) -> list[list[list[dict[str, Any]]]]:
    """Batches of messages of events: the universe in any order, with repeats, cut anywhere,
    whole messages sent again, and the messages grouped into transactions any way."""
    order = draw(st.permutations(range(len(UNIVERSE))))
    repeats = draw(st.lists(st.integers(0, len(UNIVERSE) - 1), max_size=30))
    stream = draw(st.permutations([UNIVERSE[i] for i in [*order, *repeats]]))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))))
    messages = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    messages += draw(st.lists(st.sampled_from(messages), max_size=3))
    per_batch = draw(st.integers(1, len(messages)))
    return [messages[i : i + per_batch] for i in range(0, len(messages), per_batch)]


def land(harness: Harness, batches: list[list[list[dict[str, Any]]]]) -> dict[str, Any]:
    harness.reset()
    n = 0
    decoded = []
    for batch in batches:
        items = []
        for events in batch:
            items.append((f"m{n}", tune_message(events), 1))
            n += 1
        decoded.append(decode_batch(items, MAX_DECODED, NOW))
    write(harness, *decoded)
    return fingerprint(harness, COMPARED, VOLATILE)


@pytest.fixture()
def reference(harness: Harness) -> dict[str, Any]:
    harness.open().close()  # the schema, so that `land` can empty its tables
    found = land(harness, [[UNIVERSE]])
    assert len(found["events"]) > 30 and len(found["adjustments"]) >= 3
    return found


@settings(
    max_examples=200 if FUZZ else 25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(delivery=deliveries())
def test_any_delivery_ends_in_the_same_database(
    harness: Harness, reference: dict[str, Any], delivery: list[list[list[dict[str, Any]]]]
) -> None:
    assert land(harness, delivery) == reference
