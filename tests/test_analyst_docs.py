"""What analysts are promised: the documented queries, the Datasette metadata and the demo data match
the real schema and the real pipeline's output, exactly."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from chalicelib.queues.local import LocalQueue
from scripts import demo_data, explore
from tests.demo_totals import demo_totals
from tests.kit import drain

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's database, built by the worker from the demo's sample and bad messages."""
    tmp = tmp_path_factory.mktemp("analyst")
    queue = LocalQueue(tmp / "q.db")
    assert queue.send_all([(ROOT / "sample-data.json").read_text(), *demo_data.bad_messages()]).ok
    drain(queue, tmp / "f.db")
    return tmp / "f.db"


@pytest.fixture()
def db(demo_db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(demo_db)
    yield conn
    conn.close()


def readme_queries() -> list[str]:
    """The ```sql blocks under "## Querying the data" in docs/data.md, read here on their own."""
    text = (ROOT / "docs" / "data.md").read_text()
    section = text.split("## Querying the data", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def metadata() -> dict:  # type: ignore[type-arg]
    return json.loads((ROOT / "datasette-metadata.json").read_text())


def test_readme_has_the_promised_queries() -> None:
    assert len(readme_queries()) >= 10


def test_every_readme_query_runs_and_returns_rows(db: sqlite3.Connection) -> None:
    for query in readme_queries():
        assert db.execute(query).fetchall(), query


def test_the_canned_queries_and_the_charts_are_the_documented_queries() -> None:
    meta = metadata()
    canned = meta["databases"]["firehose"]["queries"]
    assert sorted(q["sql"].strip() for q in canned.values()) == sorted(q.strip() for q in readme_queries()), (
        "run: python -m scripts.explore --sync"
    )
    assert meta == explore.synced(meta, explore.documented_queries()), "run: python -m scripts.explore --sync"
    charts = meta["plugins"]["datasette-dashboards"]["firehose"]["charts"]
    for name, chart in charts.items():
        assert chart["canned_query"] in canned, name
        assert chart["query"] == canned[chart["canned_query"]]["sql"], name


def test_datasette_metadata_names_only_real_tables_and_columns(db: sqlite3.Connection) -> None:
    meta = metadata()
    names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    tables = meta["databases"]["firehose"]["tables"]
    assert set(tables) <= names
    for table, spec in tables.items():
        columns = {d[0] for d in db.execute(f"SELECT * FROM {table} LIMIT 0").description}
        named = set(spec.get("columns", {})) | set(spec.get("facets", []))
        named |= {spec[k] for k in ("sort", "sort_desc") if k in spec}
        assert named <= columns, (table, named - columns)


def test_every_view_and_every_view_column_is_described(db: sqlite3.Connection) -> None:
    tables = metadata()["databases"]["firehose"]["tables"]
    for (view,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'view'").fetchall():
        columns = {d[0] for d in db.execute(f"SELECT * FROM {view} LIMIT 0").description}
        assert tables[view]["description"], view
        assert set(tables[view]["columns"]) == columns, (view, columns ^ set(tables[view]["columns"]))
    # Money and time columns name their unit.
    for table, spec in tables.items():
        for column, text in spec.get("columns", {}).items():
            if column.endswith("_micros"):
                assert "micro-units" in text, (table, column)
            if column.endswith("_utc") or column in ("ingested_at", "event_time", "rejected_at", "received_at"):
                assert "UTC" in text, (table, column)
            if column.endswith("_lag_s"):
                assert "seconds" in text, (table, column)


def test_summing_views_have_no_facets_that_would_count_rows_as_events() -> None:
    tables = metadata()["databases"]["firehose"]["tables"]
    for view in ("daily_stats", "daily_offers", "daily_totals", "totals", "rejects_daily", "ingestion_lag"):
        assert "facets" not in tables[view], view


def test_sample_data_json_is_the_generators_output() -> None:
    assert (ROOT / "sample-data.json").read_text() == demo_data.sample_text(), (
        "run: python -m scripts.demo_data > sample-data.json"
    )


def test_the_demos_bad_messages_are_the_same_every_run() -> None:
    """Rejects are keyed by content: the same bodies make `make demo` twice add no reject rows."""
    assert demo_data.bad_messages() == demo_data.bad_messages()


def test_the_demo_data_shows_something(db: sqlite3.Connection) -> None:
    (days,) = db.execute("SELECT count(DISTINCT date) FROM daily_totals").fetchone()
    assert days >= 14
    assert {c for (c,) in db.execute("SELECT DISTINCT currency FROM totals")} == {"EUR", "USD"}
    assert db.execute("SELECT count(DISTINCT offer_id), count(DISTINCT affiliate_id) FROM events").fetchone() >= (4, 5)
    changed = db.execute("SELECT count(*) FROM daily_totals WHERE revenue_impact <> 0").fetchone()[0]
    assert changed >= 3  # adjustments change several days' totals
    reasons = db.execute("SELECT count(DISTINCT reason) FROM rejects_daily").fetchone()[0]
    assert reasons >= 3
    assert db.execute("SELECT count(*) FROM adjustments_pending").fetchone()[0] >= 1


def test_the_totals_query_is_exact(db: sqlite3.Connection) -> None:
    """The documented totals against Decimal sums of sample-data.json made without SQL."""
    [query] = [q for q in readme_queries() if "FROM totals" in q]
    cursor = db.execute(query)
    columns = [d[0] for d in cursor.description]
    got = {(r[0], r[1]): dict(zip(columns, r, strict=True)) for r in cursor.fetchall()}
    want = demo_totals()
    assert set(got) == set(want)
    for key, row in want.items():
        for column, value in row.items():
            shown = got[key][column]
            assert Decimal(repr(shown)) == value, (key, column, shown, value)


def test_conversion_rate_tells_no_conversions_from_rejected_ones(db: sqlite3.Connection) -> None:
    """Issue 15: NULL for an affiliate with clicks and no conversions, 0.0 for one whose only
    conversion was rejected, and nothing to tell the two apart."""
    [query] = [q for q in readme_queries() if "conversion_rate_pct" in q]
    cursor = db.execute(query)
    columns = [d[0] for d in cursor.description]
    rows = {r[0]: dict(zip(columns, r, strict=True)) for r in cursor.fetchall()}
    never = rows[demo_data.NEVER_CONVERTS]
    rejected = rows[demo_data.ONLY_CONVERSION_REJECTED]
    assert never["clicks"] > 0 and (never["gross_conversions"], never["conversions"]) == (0, 0)
    assert rejected["clicks"] > 0 and (rejected["gross_conversions"], rejected["conversions"]) == (1, 0)
    assert never["conversion_rate_pct"] == rejected["conversion_rate_pct"] == 0.0
    assert all(r["conversion_rate_pct"] is not None for r in rows.values())
