"""`make explore`: Datasette on the demo database (or DB_PATH) with the project's metadata.

The metadata (`datasette-metadata.json`) describes every table, view and column, holds the
documented queries of docs/data.md as canned queries and the dashboard's charts. The queries have
one source, the analyst page: `python -m scripts.explore --sync` copies them into the metadata (the
canned queries, and each chart's `query` from the canned query its `canned_query` names), and a test
fails while the two differ.

Datasette and its plugins come from requirements-explore.txt; the worker does not need them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METADATA = ROOT / "datasette-metadata.json"
ANALYST_PAGE = ROOT / "docs" / "data.md"
DATABASE = "firehose"  # the name the metadata uses; a database file of another name is renamed to it
DEFAULT_PORT = 8001  # 8000 is chalice local's
# Datasette's own settings: long cells (raw_json, user agents) cut short so a page of `events` stays
# small, and room for the views on a large database.
SETTINGS = {"truncate_cells_html": "160", "sql_time_limit_ms": "20000", "facet_time_limit_ms": "500"}


@dataclass(frozen=True)
class Query:
    title: str
    description: str
    sql: str

    @property
    def name(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def documented_queries(text: str | None = None) -> list[Query]:
    """Each `### title` of the page's "Querying the data" section: its prose and its ```sql block."""
    text = ANALYST_PAGE.read_text() if text is None else text
    section = text.split("\n## Querying the data", 1)[1].split("\n## ", 1)[0]
    found = []
    for chunk in section.split("\n### ")[1:]:
        title, _, body = chunk.partition("\n")
        match = re.search(r"```sql\n(.*?)```", body, flags=re.S)
        if match:
            prose = " ".join(body[: match.start()].split())
            found.append(Query(title.strip(), prose, match.group(1).strip()))
    return found


def synced(metadata: dict[str, Any], queries: list[Query]) -> dict[str, Any]:
    """`metadata` with its canned queries and chart queries taken from `queries`."""
    out: dict[str, Any] = json.loads(json.dumps(metadata))
    canned = {q.name: {"title": q.title, "description": q.description, "sql": q.sql} for q in queries}
    out["databases"][DATABASE]["queries"] = canned
    for dashboard in out.get("plugins", {}).get("datasette-dashboards", {}).values():
        for chart in dashboard.get("charts", {}).values():
            if "canned_query" in chart:
                chart["query"] = canned[chart["canned_query"]]["sql"]
    return out


def load_metadata() -> dict[str, Any]:
    metadata: dict[str, Any] = json.loads(METADATA.read_text())
    return metadata


def for_database(metadata: dict[str, Any], name: str) -> dict[str, Any]:
    """The metadata for a database Datasette names `name` (after its file name) instead of firehose."""
    out: dict[str, Any] = json.loads(json.dumps(metadata))
    out["databases"] = {name: out["databases"][DATABASE]}
    for dashboard in out.get("plugins", {}).get("datasette-dashboards", {}).values():
        for chart in dashboard.get("charts", {}).values():
            if chart.get("db") == DATABASE:
                chart["db"] = name
    return out


def command(db: Path, port: int, metadata_path: Path, host: str = "127.0.0.1") -> list[str]:
    args = [sys.executable, "-m", "datasette", "serve", str(db), "--metadata", str(metadata_path)]
    args += ["--host", host, "--port", str(port)]
    for name, value in SETTINGS.items():
        args += ["--setting", name, value]
    return args


def write_metadata_for(db: Path, directory: Path) -> Path:
    """The metadata file to start Datasette with on `db`."""
    path = directory / "datasette-metadata.json"
    path.write_text(json.dumps(for_database(load_metadata(), db.stem), indent=2))
    return path


def default_db() -> Path:
    from chalicelib.settings import load_settings

    return Path(load_settings().db_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make explore", description=__doc__.split("\n\n")[0])
    parser.add_argument("db", nargs="?", type=Path, help="database file (default: DB_PATH, else data/firehose.db)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--sync", action="store_true", help="copy docs/data.md's queries into the metadata and exit")
    args = parser.parse_args(argv)
    if args.sync:
        queries = documented_queries()
        METADATA.write_text(json.dumps(synced(load_metadata(), queries), indent=2, ensure_ascii=False) + "\n")
        print(f"{METADATA.name}: {len(queries)} canned queries from {ANALYST_PAGE.relative_to(ROOT)}")
        return 0
    if importlib.util.find_spec("datasette") is None:
        print("Datasette is missing: pip install -r requirements-explore.txt (make explore does)", file=sys.stderr)
        return 2
    db = args.db or default_db()
    if not db.is_file():
        print(f"no database at {db}: run `make demo` first, or set DB_PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="firehose-explore-") as tmp:
        metadata_path = write_metadata_for(db, Path(tmp))
        print(
            f"Datasette on http://{args.host}:{args.port}/ ; dashboard: http://{args.host}:{args.port}/-/dashboards/{DATABASE}"
        )
        print("Ctrl-C stops it.", flush=True)
        server = subprocess.Popen(command(db, args.port, metadata_path, args.host))
        # Stopping this process stops Datasette too (Ctrl-C reaches both by itself).
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            return server.wait()
        except KeyboardInterrupt:
            server.wait()
            return 0


if __name__ == "__main__":
    sys.exit(main())
