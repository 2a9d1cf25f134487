"""The rows of one transaction, as the store writes them: the column lists and the containers.

The worker builds these (worker/rows.py decodes messages into them); the store only writes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Typed columns of `events` filled straight from the field of the same name.
INT_FIELDS = (
    "conversion_id offer_id affiliate_id affiliate_manager_id advertiser_id advertiser_manager_id "
    "ad_campaign_id ad_campaign_creative_id creative_url_id browser_id customer_id payout_group_id "
    "revenue_group_id goal_id offer_file_id offer_url_id status_code offer_expires"
).split()
TEXT_FIELDS = (
    "date transaction_id affiliate_click_id network_id currency payout_type revenue_type status source "
    "aff_sub aff_sub2 aff_sub3 aff_sub4 aff_sub5 adv_sub adv_sub2 adv_sub3 adv_sub4 adv_sub5 "
    "adv_unique1 adv_unique2 adv_unique3 adv_unique4 adv_unique5 affiliate_unique1 affiliate_unique2 "
    "affiliate_unique3 affiliate_unique4 affiliate_unique5 app_version timezone session_datetime ip "
    "user_agent country_code mobile_carrier req_connection_speed click_url "
    # Listed in the format notes as likely but unconfirmed in Firehose payloads.
    "session_ip refer pixel_refer device_brand device_model device_os device_os_version device_id android_id "
    "ios_ifa ios_ifv google_aid user_id promo_code order_id sku_id product_category"
).split()
BOOL_FIELDS = ("is_click_unique", "session_on_impression", "is_adjustment")
TIME_FIELDS = ("adjustment_timestamp", "created_timestamp")
MONEY_FIELDS = ("payout", "revenue", "sale_amount", "current_payout", "current_revenue")

EVENT_COLUMNS = (
    [
        "tune_event_id",
        "key_source",
        "action",
        "created_from_adjustment",
        "event_time",
        "event_time_utc",
        "datetime_raw",
        "num",
    ]
    + INT_FIELDS
    + TEXT_FIELDS
    + list(BOOL_FIELDS)
    + list(TIME_FIELDS)
    + [f"{m}_micros" for m in MONEY_FIELDS]
    + ["raw_json", "message_id", "ingested_at"]
)
ADJUSTMENT_COLUMNS = [
    "adjustment_sequence_id",
    "tune_event_id",
    "action",
    "num",
    "payout_micros",
    "revenue_micros",
    "sale_amount_micros",
    "current_payout_micros",
    "current_revenue_micros",
    "adjustment_timestamp",
    "adjustment_time_utc",
    "status",
    "transaction_id",
    "offer_id",
    "affiliate_id",
    "advertiser_id",
    "goal_id",
    "currency",
    "raw_json",
    "message_id",
    "ingested_at",
]
ENVELOPE_COLUMNS = ["message_id", "received_at", "receive_count", "control_json", "event_count"]
REJECT_COLUMNS = ["reject_key", "message_id", "event_index", "reason", "raw", "rejected_at"]


@dataclass(eq=False)
class Rows:
    """Rows for one transaction, gathered from one or more queue messages: what `Store.write` takes,
    and binds as they are.

    `decoded_bytes`: the decoded text the rows hold (each event's JSON, each reject's raw input),
    what their memory grows with; the worker bounds a transaction by it. A by-product, not content."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    adjustments: list[tuple[Any, ...]] = field(default_factory=list)
    envelopes: list[tuple[Any, ...]] = field(default_factory=list)
    rejects: list[tuple[Any, ...]] = field(default_factory=list)
    decoded_bytes: int = 0

    def __eq__(self, other: object) -> bool:
        # Equal by content, whichever builder made them (worker.rows.Batch is a Rows).
        if not isinstance(other, Rows):
            return NotImplemented
        mine = (self.events, self.adjustments, self.envelopes, self.rejects)
        return mine == (other.events, other.adjustments, other.envelopes, other.rejects)

    def extend(self, other: Rows) -> None:
        self.events += other.events
        self.adjustments += other.adjustments
        self.envelopes += other.envelopes
        self.rejects += other.rejects
        self.decoded_bytes += other.decoded_bytes

    @property
    def size(self) -> int:
        """Events, updates and rejects: the inputs these rows stand for."""
        return len(self.events) + len(self.adjustments) + len(self.rejects)


class Incoming:
    """A batch whose rows arrive in parts, one per message, as a decoder produces them: the store
    writes the first parts while later ones are still being decoded.

    `parts()` can be iterated again (a write retried after a lock): it replays the parts already
    handed out, then goes on with the rest. The properties of `Rows` read the whole batch, waiting
    for every part."""

    def __init__(self, parts: Iterable[Rows]) -> None:
        self._source: Iterator[Rows] = iter(parts)
        self._received: list[Rows] = []
        self._whole: Rows | None = None

    def parts(self) -> Iterator[Rows]:
        yield from list(self._received)
        for part in self._source:
            self._received.append(part)
            yield part

    def whole(self) -> Rows:
        if self._whole is None:
            for _ in self.parts():
                pass
            self._whole = Rows()
            for part in self._received:
                self._whole.extend(part)
            self._received = [self._whole]
        return self._whole

    @property
    def events(self) -> list[tuple[Any, ...]]:
        return self.whole().events

    @property
    def adjustments(self) -> list[tuple[Any, ...]]:
        return self.whole().adjustments

    @property
    def envelopes(self) -> list[tuple[Any, ...]]:
        return self.whole().envelopes

    @property
    def rejects(self) -> list[tuple[Any, ...]]:
        return self.whole().rejects
