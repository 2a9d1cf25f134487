"""`make explore` in a real browser: Datasette (started as `make explore` starts it) on a database the
worker built from the demo data, driven by headless Chromium (Debian's package; run
scripts/ensure_chromium.sh first, which `make test` does: this test fails, never skips, without it).

Invariants: every chart of the dashboard is rendered into the page (Vega's SVG, or the table), every
canned query answers without an error, and the totals on the dashboard and on the canned query's
page are the exact sums of sample-data.json, computed here without SQL.

With FIREHOSE_WRITE_SCREENSHOT=1 the dashboard's screenshot is written to docs/explore.png.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from html import unescape
from pathlib import Path

import pytest

from chalicelib.queues.local import LocalQueue
from scripts import demo_data, explore
from scripts.local_stack import free_port
from tests.demo_totals import demo_totals
from tests.kit import drain

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "explore.png"
# Charts draw client-side once their data has been fetched: Chromium's virtual time runs the page's
# timers and fetches to completion before the DOM is dumped.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
    "--window-size=1200,2000",
]


def chromium_binary() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is not installed: run scripts/ensure_chromium.sh (make test does)"
    return found


def chromium(tmp: Path, url: str, *action: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    done = subprocess.run(
        [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def datasette(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Datasette's URL, serving the demo's database as `make explore` serves it."""
    chromium_binary()
    tmp = tmp_path_factory.mktemp("explore")
    queue = LocalQueue(tmp / "queue.db")
    assert queue.send_all([(ROOT / "sample-data.json").read_text(), *demo_data.bad_messages()]).ok
    db = tmp / "firehose.db"
    drain(queue, db)
    port = free_port()
    server = subprocess.Popen(
        explore.command(db, port, explore.write_metadata_for(db, tmp)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:  # Uvicorn says when it listens
            if "Uvicorn running on" in line:
                break
        else:
            pytest.fail(f"Datasette exited with {server.wait()} before listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


def cells(html: str) -> list[list[str]]:
    """The rows of the first table in `html`, as the text of their cells."""
    table = html.split("<table", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)
    return [[unescape(c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, flags=re.S)] for row in rows]


def assert_exact_totals(rows: list[list[str]]) -> None:
    header, *body = rows
    want = demo_totals()
    got = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in body}
    assert set(got) == set(want)
    for key, columns in want.items():
        for column, value in columns.items():
            assert Decimal(got[key][column]) == value, (key, column, got[key][column], value)


def test_the_dashboards_charts_render_and_its_totals_are_exact(datasette: str, tmp_path: Path) -> None:
    dashboard = explore.load_metadata()["plugins"]["datasette-dashboards"]["firehose"]
    dom = chromium(tmp_path, f"{datasette}/-/dashboards/firehose", "--dump-dom")
    for slug, chart in dashboard["charts"].items():
        inside = dom.split(f'id="chart-{slug}"', 1)[1].split('id="chart-', 1)[0]
        if chart["library"] == "vega-lite":
            # vega-embed replaces the empty placeholder with the drawn chart: an SVG of marks.
            assert re.search(r'<svg[^>]*class="marks"', inside), f"chart {slug} was not drawn"
            assert "<path" in inside or "<rect" in inside or "<line" in inside, f"chart {slug} has no marks"
        else:
            assert "<table" in inside, f"chart {slug} was not drawn"
    totals = dom.split('id="chart-totals"', 1)[1]
    assert_exact_totals(cells(totals))

    shot = tmp_path / "explore.png"
    chromium(tmp_path, f"{datasette}/-/dashboards/firehose", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("FIREHOSE_WRITE_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)


def test_every_canned_query_answers_in_the_browser(datasette: str, tmp_path: Path) -> None:
    queries = explore.load_metadata()["databases"]["firehose"]["queries"]
    assert len(queries) >= 10
    for name in queries:
        page = chromium(tmp_path, f"{datasette}/firehose/{name}", "--dump-dom")
        assert "message-error" not in page, (name, re.findall(r'message-error">(.*?)<', page))
        rows = cells(page)
        assert len(rows) >= 2, name  # a header and at least one row on the demo data
        if name == "totals-by-currency-and-action":
            assert_exact_totals(rows)


def test_the_committed_screenshot_is_a_small_png() -> None:
    """docs/data.md shows it; the dashboard test writes it with FIREHOSE_WRITE_SCREENSHOT=1."""
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 400_000
