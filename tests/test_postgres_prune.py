"""`read_queue.py prune --before DATE [--dry-run]` (issue 14): whole months of `events` older than
the date go, and nothing else does; a dry run drops nothing; SQLite and a date inside the month
being written are refused with exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from commands.cli import main
from db.postgres.store import PostgresStore
from tests.kit import tune_message
from worker.decoders import decode_batch

OCT_2025, NOV_2025, DEC_2025 = 1_760_000_000, 1_763_000_000, 1_765_000_000
SEPT_2026 = 1_790_000_000


def click(key: str, when: Any) -> dict[str, Any]:
    return {"action": "click", "tune_event_id": key, "datetime": when, "offer_id": 1, "payout": 0.05}


def adjustment(seq: int, when: int) -> dict[str, Any]:
    return {
        "action": "conversion",
        "adjust_action": 2,
        "tune_event_id": f"c-{seq}",
        "adjustment_sequence_id": seq,
        "adjustment_datetime": when,
    }


def write(url: str, *events: dict[str, Any], message_id: str = "m1") -> None:
    store = PostgresStore.open(url)
    try:
        store.write(decode_batch([(message_id, tune_message(list(events)), 1)], 32 << 20, SEPT_2026))
    finally:
        store.close()


def stored(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        keys = sorted(r[0] for r in conn.execute("SELECT tune_event_id FROM events"))
        parts = sorted(
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'events'::regclass"
            )
        )
        others = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("adjustments", "envelopes")}  # type: ignore[index]
    return {"keys": keys, "partitions": parts, **others}


@pytest.fixture()
def months_of_events(pg_url: str) -> str:
    write(
        pg_url,
        click("oct", OCT_2025),
        click("nov", NOV_2025),
        click("dec", DEC_2025),
        click("sept", SEPT_2026),
        click("no-time", "not a time"),
        adjustment(1, OCT_2025),
    )
    return pg_url


def test_a_dry_run_lists_the_months_older_than_the_date_and_drops_nothing(
    months_of_events: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stored(months_of_events)
    assert main(["prune", "--before", "2025-12-01", "--dry-run", "--db", months_of_events]) == 0
    out = capsys.readouterr().out
    assert "would drop events_2025_10" in out and "would drop events_2025_11" in out
    assert "events_2025_12" not in out and "would drop 2 month(s)" in out
    assert stored(months_of_events) == before


def test_prune_drops_exactly_the_months_that_end_on_or_before_the_date(
    months_of_events: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = stored(months_of_events)
    monkeypatch.setenv("DATABASE_URL", months_of_events)
    assert main(["prune", "--before", "2025-12-01"]) == 0
    assert "dropped 2 month(s)" in capsys.readouterr().out
    after = stored(months_of_events)
    assert after["keys"] == sorted(set(before["keys"]) - {"oct", "nov"})  # no-time stays in events_default
    assert set(before["partitions"]) - set(after["partitions"]) == {"events_2025_10", "events_2025_11"}
    assert (after["adjustments"], after["envelopes"]) == (before["adjustments"], before["envelopes"])
    # A day inside December keeps December: a month goes only when all of it is older.
    assert main(["prune", "--before", "2025-12-31"]) == 0
    assert "dec" in stored(months_of_events)["keys"]
    # An event of a dropped month sent again lands (in events_default, or its month made again): not lost.
    write(months_of_events, click("oct-late", OCT_2025), message_id="m2")
    assert "oct-late" in stored(months_of_events)["keys"]


def test_prune_refuses_sqlite_and_a_date_inside_the_month_being_written(
    tmp_path: Path, months_of_events: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sqlite_path = tmp_path / "f.db"
    assert main(["prune", "--before", "2025-12-01", "--db", str(sqlite_path)]) == 2
    assert "PostgreSQL" in capsys.readouterr().err and not sqlite_path.exists()
    before = stored(months_of_events)
    assert main(["prune", "--before", "2099-01-01", "--db", months_of_events]) == 2
    assert "this month" in capsys.readouterr().err
    assert stored(months_of_events) == before
    assert main(["prune", "--before", "2025-13-01", "--db", months_of_events]) == 2  # not a date: usage
