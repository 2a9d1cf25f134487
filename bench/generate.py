"""Seeded generator of realistic Firehose events, following ../shared/firehose-format.md.

Mix: mostly impressions and clicks, some conversions, a few percent adjustments (creates and
updates, including rejections and updates that arrive before their original), and about 1%
duplicates. The same seed always gives the same events.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

BASE_TIME = 1_790_000_000  # 2026-09-21
USER_AGENTS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
]
COUNTRIES = ["US", "GB", "DE", "FR", "BR", "IN", "JP", "CA"]
CARRIERS = ["?", "Verizon", "T-Mobile", "Vodafone", "Orange"]


class Generator:
    def __init__(self, seed: int = 42, offers: int = 12, affiliates: int = 25) -> None:
        self.rng = random.Random(seed)
        self.offers = offers
        self.affiliates = affiliates
        self.sequence = 0
        self.conversions: list[dict[str, Any]] = []

    def _id(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4).hex

    def _base(self, action: str, when: int) -> dict[str, Any]:
        r = self.rng
        offer = r.randint(1, self.offers)
        affiliate = r.randint(1, self.affiliates)
        event: dict[str, Any] = {
            "action": action,
            "tune_event_id": self._id(),
            "datetime": when,
            "transaction_id": uuid.UUID(int=r.getrandbits(128)).hex[:30],
            "network_id": "demonetwork",
            "offer_id": offer,
            "affiliate_id": affiliate,
            "affiliate_manager_id": 1 + affiliate % 4,
            "advertiser_id": 100 + offer % 5,
            "advertiser_manager_id": "0",
            "source": r.choice(["", "newsletter", "search", "social"]),
            "aff_sub": f"sub{r.randint(1, 50)}",
            "aff_sub2": "",
            "ip": f"203.0.{r.randint(0, 255)}.{r.randint(1, 254)}",
            "user_agent": r.choice(USER_AGENTS),
            "country_code": r.choice(COUNTRIES),
            "mobile_carrier": r.choice(CARRIERS),
            "req_connection_speed": r.choice(["broadband", "mobile"]),
            "timezone": "America/Los_Angeles",
            "currency": "USD",
            "offer_expires": 2419200,
            "status_code": 0,
        }
        if action == "click":
            event["click_url"] = f"https://track.example.com/aff_c?offer_id={offer}&aff_id={affiliate}"
            event["is_click_unique"] = r.random() < 0.8
            event["session_on_impression"] = r.random() < 0.3
            event["payout_type"], event["revenue_type"] = "cpc", "cpc"
            event["payout"], event["revenue"] = 0.05, 0.12
        elif action == "impression":
            event["payout_type"], event["revenue_type"] = "cpm", "cpm"
            event["payout"], event["revenue"] = 0.002, 0.005
        else:
            sale = round(r.uniform(10, 300), 2)
            event["goal_id"] = r.choice([0, 1, 2])
            event["payout_type"], event["revenue_type"] = "cpa_flat", "cpa_both"
            event["payout"] = round(r.choice([2.5, 5.0, 7.25, 10.0]), 2)
            event["revenue"] = round(event["payout"] * 1.6 + sale * 0.02, 2)
            event["sale_amount"] = sale
            event["status"] = "approved"
            event["adv_sub"] = f"order-{r.randint(10000, 99999)}"
        return event

    def standard(self, when: int) -> dict[str, Any]:
        roll = self.rng.random()
        action = "impression" if roll < 0.55 else "click" if roll < 0.93 else "conversion"
        event = self._base(action, when)
        if action == "conversion":
            self.conversions.append(event)
        return event

    def create(self, when: int) -> dict[str, Any]:
        """A conversion created through the Network API (adjust_action create)."""
        event = self._base("conversion", when)
        self.sequence += 1
        event.update(
            adjust_action=self.rng.choice([1, "create", "CREATE", "1"]),
            created_from_adjustment=True,
            conversion_id=self.rng.randint(1_000_000, 9_999_999),
            num=1,
            current_payout=event["payout"],
            current_revenue=event["revenue"],
            adjustment_sequence_id=(when * 10_000) + self.sequence % 10_000,
            adjustment_timestamp=when,
            created_timestamp=when - 60,
            country_code="INT",
            datetime=f"{_iso(when)}",
        )
        return event

    def update(self, original: dict[str, Any], when: int, reject: bool) -> dict[str, Any]:
        """An update to `original`: a rejection (negative deltas) or a payout correction."""
        self.sequence += 1
        payout = -original["payout"] if reject else 1.25
        revenue = -original["revenue"] if reject else 2.0
        return {
            "action": original["action"],
            "adjust_action": self.rng.choice([2, "update", "Update", "2"]),
            "tune_event_id": original["tune_event_id"],
            "adjustment_sequence_id": (when * 10_000) + self.sequence % 10_000,
            "adjustment_timestamp": when,
            "datetime": original["datetime"],
            "offer_id": original["offer_id"],
            "affiliate_id": original["affiliate_id"],
            "aff_sub": original.get("aff_sub", ""),
            "num": -1 if reject else 0,
            "payout": round(payout, 2),
            "revenue": round(revenue, 2),
            "current_payout": 0.0 if reject else round(original["payout"] + payout, 2),
            "current_revenue": 0.0 if reject else round(original["revenue"] + revenue, 2),
            "status": "rejected" if reject else "approved",
            "currency": "USD",
        }

    def events(self, count: int, adjustment_share: float = 0.03, duplicate_share: float = 0.01) -> list[dict[str, Any]]:
        """`count` events in delivery order, with adjustments and duplicates mixed in."""
        r = self.rng
        out: list[dict[str, Any]] = []
        when = BASE_TIME
        while len(out) < count:
            when += r.randint(0, 2)
            roll = r.random()
            if roll < duplicate_share and out:
                out.append(dict(r.choice(out)))
            elif roll < duplicate_share + adjustment_share and self.conversions:
                if r.random() < 0.3:
                    out.append(self.create(when))
                else:
                    out.append(self.update(r.choice(self.conversions), when, reject=r.random() < 0.5))
            else:
                out.append(self.standard(when))
        return out


def _iso(epoch: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def sample_envelope(seed: int = 7) -> dict[str, Any]:
    """The demo's `sample-data.json`: about 100 events with every kind the pipeline handles."""
    g = Generator(seed, offers=4, affiliates=6)
    events = [g.standard(BASE_TIME + i * 7) for i in range(90)]
    while len(g.conversions) < 4:
        events.append(g._base("conversion", BASE_TIME + 600))
        g.conversions.append(events[-1])
    late_original = g._base("conversion", BASE_TIME + 700)
    late_original["payout"], late_original["revenue"] = 8.0, 14.5
    rejected, corrected = g.conversions[0], g.conversions[1]
    early_update = g.update(late_original, BASE_TIME + 900, reject=False)
    adjustments = [
        g.create(BASE_TIME + 800),
        g.create(BASE_TIME + 810),
        g.update(rejected, BASE_TIME + 820, reject=True),
        g.update(corrected, BASE_TIME + 830, reject=False),
    ]
    # The update to `late_original` is delivered before the original itself, and one update's
    # original predates the subscription: it waits in adjustments_pending.
    never_seen = g._base("conversion", BASE_TIME - 86_400)
    tail = [*adjustments, early_update, late_original, g.update(never_seen, BASE_TIME + 950, reject=True)]
    duplicates = [dict(events[3]), dict(events[10]), dict(adjustments[2])]
    body = events + tail + duplicates
    return {
        "version": 1,
        "network_id": "demonetwork",
        "sent_at": BASE_TIME + 1000,
        "event_count": len(body),
        "events": body,
    }


if __name__ == "__main__":
    import json
    import sys

    json.dump(sample_envelope(), sys.stdout, indent=1)
    sys.stdout.write("\n")
