"""`make demo-postgres` (scripts/demo_postgres.py) prints the demo's exact totals, computed from
sample-data.json alone (tests/demo_totals.py), read back from PostgreSQL's `totals` view."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from tests.demo_totals import demo_totals
from tests.ops_kit import worker_env

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = ("events", "gross_num", "net_num", "gross_payout", "net_payout", "gross_revenue", "net_revenue")


def test_demo_postgres_prints_the_exact_totals_of_the_sample() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo_postgres"],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("currency"))
    printed = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        currency, action, *numbers = line.split()
        printed[(currency, action)] = dict(zip(NUMBERS, map(Decimal, numbers), strict=True))
    expected = {key: {n: Decimal(row.get(n, 0)) for n in NUMBERS} for key, row in demo_totals().items()}
    assert printed == expected
    assert "rejects 4" in done.stdout and "postgresql://" in done.stdout
