"""The demo's data: `sample-data.json` and a few bad queue messages, the same every run.

`python -m scripts.demo_data > sample-data.json` writes the sample (a test holds the committed
file to this output). Two weeks of traffic (2026-09-08 to 2026-09-21, UTC) for five offers, three
paid in USD and two in EUR, and six affiliates; adjustments that change the totals (conversions
created through the API, rejections, corrections, an update that arrives before its original and
one whose original never comes); duplicates. Affiliate 6 clicks but never converts; affiliate 5's
only conversion is rejected: the two cases the conversion-rate query must tell apart.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

FIRST_DAY = 1_788_825_600  # 2026-09-08T00:00:00Z
DAYS = 14
DAY = 86_400
OFFERS = {1: "USD", 2: "USD", 3: "USD", 4: "EUR", 5: "EUR"}
AFFILIATES = range(1, 7)
NEVER_CONVERTS, ONLY_CONVERSION_REJECTED = 6, 5
# (payout, revenue) per action and currency; conversions draw a CPA payout instead.
PRICES = {
    ("impression", "USD"): (0.002, 0.005),
    ("impression", "EUR"): (0.0015, 0.004),
    ("click", "USD"): (0.05, 0.12),
    ("click", "EUR"): (0.04, 0.1),
}
CPA = {"USD": [2.5, 5.0, 7.25, 10.0], "EUR": [3.0, 6.5, 9.0]}
COUNTRIES = ["US", "GB", "DE", "FR", "BR", "JP"]
AGENTS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
]


class _Demo:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sequence = 0

    def _id(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4).hex

    def event(self, action: str, when: int, offer: int | None = None, affiliate: int | None = None) -> dict[str, Any]:
        r = self.rng
        offer = offer or r.choice(list(OFFERS))
        affiliate = affiliate or r.choice(list(AFFILIATES))
        currency = OFFERS[offer]
        event: dict[str, Any] = {
            "action": action,
            "tune_event_id": self._id(),
            "datetime": when,
            "transaction_id": self._id()[:30],
            "network_id": "demonetwork",
            "offer_id": offer,
            "affiliate_id": affiliate,
            "advertiser_id": 100 + offer,
            "aff_sub": f"sub{r.randint(1, 20)}",
            "ip": f"203.0.{r.randint(0, 255)}.{r.randint(1, 254)}",
            "user_agent": r.choice(AGENTS),
            "country_code": r.choice(COUNTRIES),
            "currency": currency,
            "status_code": 0,
        }
        if action == "conversion":
            sale = round(r.uniform(10, 300), 2)
            payout = r.choice(CPA[currency])
            event.update(
                goal_id=r.choice([0, 1]),
                payout_type="cpa_flat",
                revenue_type="cpa_both",
                payout=payout,
                revenue=round(payout * 1.6 + sale * 0.02, 2),
                sale_amount=sale,
                status="approved",
                adv_sub=f"order-{r.randint(10000, 99999)}",
            )
        else:
            event["payout"], event["revenue"] = PRICES[(action, currency)]
            event["payout_type"] = event["revenue_type"] = "cpm" if action == "impression" else "cpc"
        return event

    def standard(self, when: int) -> dict[str, Any]:
        roll = self.rng.random()
        action = "impression" if roll < 0.55 else "click" if roll < 0.9 else "conversion"
        event = self.event(action, when)
        if action == "conversion" and event["affiliate_id"] in (NEVER_CONVERTS, ONLY_CONVERSION_REJECTED):
            event["affiliate_id"] = self.rng.randint(1, 4)
        return event

    def create(self, when: int) -> dict[str, Any]:
        """A conversion created through the Network API (adjust_action create), `datetime` as text."""
        event = self.event("conversion", when, affiliate=self.rng.randint(1, 4))
        self.sequence += 1
        event.update(
            adjust_action=self.rng.choice([1, "create"]),
            created_from_adjustment=True,
            num=1,
            current_payout=event["payout"],
            current_revenue=event["revenue"],
            adjustment_sequence_id=when * 100 + self.sequence,
            adjustment_timestamp=when,
            datetime=datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
        return event

    def update(self, original: dict[str, Any], when: int, reject: bool) -> dict[str, Any]:
        """A rejection (the conversion's amounts taken back) or a correction (payout and revenue raised)."""
        self.sequence += 1
        payout, revenue = (-original["payout"], -original["revenue"]) if reject else (1.25, 2.0)
        return {
            "action": original["action"],
            "adjust_action": self.rng.choice([2, "update"]),
            "tune_event_id": original["tune_event_id"],
            "adjustment_sequence_id": when * 100 + self.sequence,
            "adjustment_timestamp": when,
            "datetime": original["datetime"],
            "offer_id": original["offer_id"],
            "affiliate_id": original["affiliate_id"],
            "num": -1 if reject else 0,
            "payout": payout,
            "revenue": revenue,
            "current_payout": 0.0 if reject else round(original["payout"] + payout, 2),
            "current_revenue": 0.0 if reject else round(original["revenue"] + revenue, 2),
            "status": "rejected" if reject else "approved",
            "currency": original["currency"],
        }


def _traffic(demo: _Demo) -> list[dict[str, Any]]:
    """Standard events: more each day, fewer at weekends, spread over the day."""
    events = []
    for day in range(DAYS):
        start = FIRST_DAY + day * DAY
        weekend = datetime.fromtimestamp(start, UTC).weekday() >= 5
        count = (16 + 2 * day) // (2 if weekend else 1)
        for when in sorted(demo.rng.randrange(start, start + DAY) for _ in range(count)):
            events.append(demo.standard(when))
    return events


def sample_envelope(seed: int = 15) -> dict[str, Any]:
    demo = _Demo(seed)
    events = _traffic(demo)
    conversions = [e for e in events if e["action"] == "conversion"]
    last = FIRST_DAY + DAYS * DAY - 3600
    doomed = demo.event("conversion", FIRST_DAY + 9 * DAY + 5000, affiliate=ONLY_CONVERSION_REJECTED)
    late = demo.event("conversion", FIRST_DAY + 12 * DAY + 7000, offer=4)
    never_seen = demo.event("conversion", FIRST_DAY - 3 * DAY, offer=2)
    creates = [demo.create(FIRST_DAY + d * DAY + 40_000) for d in (2, 6, 11)]
    updates = [
        demo.update(conversions[1], FIRST_DAY + 3 * DAY, reject=True),
        demo.update(conversions[len(conversions) // 2], FIRST_DAY + 8 * DAY, reject=True),
        demo.update(doomed, FIRST_DAY + 10 * DAY, reject=True),
        demo.update(conversions[4], FIRST_DAY + 5 * DAY, reject=False),
        demo.update(conversions[-3], last, reject=False),
    ]
    # The update to `late` is delivered before `late` itself; `never_seen` predates the
    # subscription, so its update waits in adjustments_pending for good.
    early = demo.update(late, FIRST_DAY + 13 * DAY, reject=False)
    orphan = demo.update(never_seen, FIRST_DAY + DAY, reject=True)
    duplicates = [dict(events[3]), dict(creates[0]), dict(updates[0])]
    body = [*events, doomed, *creates, *updates, early, late, orphan, *duplicates]
    return {
        "version": 1,
        "network_id": "demonetwork",
        "sent_at": FIRST_DAY + DAYS * DAY,
        "event_count": len(body),
        "events": body,
    }


def sample_text() -> str:
    return json.dumps(sample_envelope(), indent=1) + "\n"


def _tune_form(document: Any) -> str:
    return base64.b64encode(gzip.compress(json.dumps(document).encode(), mtime=0)).decode()


def bad_messages() -> list[str]:
    """What the demo puts straight on the queue so that `rejects` has rows: two messages that cannot
    be decoded, and one whose two events cannot be stored exactly."""
    when = FIRST_DAY + 13 * DAY
    events = [
        {"action": "click", "tune_event_id": "demo-bad-payout", "datetime": when, "payout": "a lot", "currency": "USD"},
        {"action": "conversion", "adjust_action": 2, "tune_event_id": "demo-no-sequence", "num": -1},
    ]
    return [
        "this is not base64(gzip(JSON))",
        _tune_form({"events": []})[:24],
        _tune_form({"events": events}),
    ]


if __name__ == "__main__":
    sys.stdout.write(sample_text())
