"""The demo's exact totals, computed from sample-data.json alone with Decimal: no SQL, no worker code.

The rules are the documented ones: an event's key is its tune_event_id and the first copy counts;
an update (adjust_action 2/"update") counts once per adjustment_sequence_id and only when its event
was stored; a standard event without num counts as 1; money is the decimal text of the JSON number.
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AMOUNTS = ("payout", "revenue")


def _is_update(event: dict[str, Any]) -> bool:
    return str(event.get("adjust_action", "")).strip().lower() in ("2", "update")


def _amount(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(str(value))


def demo_totals(sample: Path = ROOT / "sample-data.json") -> dict[tuple[str, str], dict[str, Any]]:
    """(currency, action) -> events, gross_num, net_num, gross/net payout and revenue (Decimal)."""
    raw = json.loads(sample.read_text(), parse_float=Decimal)["events"]
    events: dict[str, dict[str, Any]] = {}
    updates: dict[int, dict[str, Any]] = {}
    for event in raw:
        if _is_update(event):
            updates.setdefault(int(event["adjustment_sequence_id"]), event)
        else:
            events.setdefault(str(event["tune_event_id"]), event)
    totals: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(Decimal))
    for event in events.values():
        row = totals[(event["currency"], event["action"])]
        num = Decimal(event.get("num", 1))
        row["events"] += 1
        row["gross_num"] += num
        row["net_num"] += num
        for name in AMOUNTS:
            row[f"gross_{name}"] += _amount(event.get(name))
            row[f"net_{name}"] += _amount(event.get(name))
    for update in updates.values():
        original = events.get(str(update["tune_event_id"]))
        if original is None:
            continue  # waits in adjustments_pending
        row = totals[(original["currency"], original["action"])]
        row["net_num"] += Decimal(update.get("num", 0))
        for name in AMOUNTS:
            row[f"net_{name}"] += _amount(update.get(name))
    return {key: dict(value) for key, value in totals.items()}
