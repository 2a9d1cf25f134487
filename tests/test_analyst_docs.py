"""What analysts are promised: the Datasette metadata and the README's queries match the real schema."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from chalicelib.queues.local import LocalQueue
from tests.kit import drain

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("analyst")
    queue = LocalQueue(tmp / "q.db")
    # The sample, plus one message that cannot be decoded so `rejects` has a row to show.
    assert queue.send_all([(ROOT / "sample-data.json").read_text(), "H4sI-not-really-gzip"]).ok
    drain(queue, tmp / "f.db")
    return tmp / "f.db"


def test_datasette_metadata_names_only_real_tables_and_columns(demo_db: Path) -> None:
    meta = json.loads((ROOT / "datasette-metadata.json").read_text())
    db = sqlite3.connect(demo_db)
    for table, spec in meta["databases"]["firehose"]["tables"].items():
        columns = {d[0] for d in db.execute(f"SELECT * FROM {table} LIMIT 0").description}
        named = set(spec.get("columns", {})) | set(spec.get("facets", []))
        named |= {spec["sort_desc"]} if "sort_desc" in spec else set()
        assert named <= columns, (table, named - columns)


def readme_queries() -> list[str]:
    text = (ROOT / "docs" / "data.md").read_text()
    section = text.split("## Querying the data", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_readme_has_the_promised_queries() -> None:
    assert len(readme_queries()) >= 5


def test_every_readme_query_runs_and_returns_rows(demo_db: Path) -> None:
    db = sqlite3.connect(demo_db)
    for query in readme_queries():
        assert db.execute(query).fetchall(), query
