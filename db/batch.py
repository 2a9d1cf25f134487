"""The rows of one transaction, as the store writes them: the column lists and the containers.

The worker builds these (worker/rows.py decodes messages into them); the store only writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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


_EVENT_TIME = EVENT_COLUMNS.index("event_time")


class _ReadWhole:
    """Rows that arrive over time, read as a `Rows` by waiting for all of them (`whole()`)."""

    def whole(self) -> Rows:
        raise NotImplementedError

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


class Streamed(_ReadWhole):
    """One message's rows, too many to hold at once: they arrive in chunks (each a `Rows`) while the
    store writes them, and each is dropped once written. `size` and `decoded_bytes` are the whole
    message's, known before any chunk. `chunks()` can be iterated again (a write retried): the chunks
    then come from `again`, which reads them once more from where they are kept, or decodes the
    message again. What passed is remembered only as much as the worker's observers need: the
    envelope rows and the events' times (`summary`)."""

    def __init__(
        self, size: int, decoded_bytes: int, chunks: Iterable[Rows], again: Callable[[], Iterable[Rows]]
    ) -> None:
        self.size, self.decoded_bytes = size, decoded_bytes
        self._first: Iterable[Rows] | None = chunks
        self._again = again
        self._envelopes: list[tuple[Any, ...]] = []
        self._event_times: list[int] = []
        self._whole: Rows | None = None

    def chunks(self) -> Iterator[Rows]:
        source, self._first = self._first, None
        envelopes: list[tuple[Any, ...]] = []
        times: list[int] = []
        for chunk in source if source is not None else self._again():
            envelopes += chunk.envelopes
            times += [t for row in chunk.events if type(t := row[_EVENT_TIME]) is int]
            yield chunk
        self._envelopes, self._event_times = envelopes, times

    def summary(self) -> Rows:
        """After `chunks()`: its envelope rows, and one short row per event holding only its
        `event_time` (at the index it has in an events row), for the observers."""
        stub = (None,) * _EVENT_TIME
        return Rows(
            events=[(*stub, t) for t in self._event_times],
            envelopes=list(self._envelopes),
            decoded_bytes=self.decoded_bytes,
        )

    def whole(self) -> Rows:
        """Every row at once (tests, and callers that want a `Rows`): as much memory as the message,
        kept from then on."""
        if self._whole is None:
            whole = Rows()
            for chunk in self.chunks():
                whole.extend(chunk)
            whole.decoded_bytes = self.decoded_bytes
            self._whole = whole
            self._first, self._again = None, lambda: [whole]
        return self._whole


Part = Rows | Streamed


def chunks_of(part: Part) -> Iterator[Rows]:
    """A message's rows as the store writes them: itself, or its chunks."""
    if isinstance(part, Streamed):
        yield from part.chunks()
    else:
        yield part


class Incoming(_ReadWhole):
    """A batch whose rows arrive in parts, one per message, as a decoder produces them: the store
    writes the first parts while later ones are still being decoded.

    `parts()` yields what the store inserts: each part, or a `Streamed` part's chunks one by one.
    It can be iterated again (a write retried after a lock): it replays the parts already handed out
    (a `Streamed` part reads its chunks again), then goes on with the rest. The properties of `Rows`
    read the whole batch, waiting for every part."""

    def __init__(self, parts: Iterable[Part]) -> None:
        self._source: Iterator[Part] = iter(parts)
        self._received: list[Part] = []
        self._whole: Rows | None = None

    def parts(self) -> Iterator[Rows]:
        for part in list(self._received):
            yield from chunks_of(part)
        for part in self._source:
            self._received.append(part)
            yield from chunks_of(part)

    def taken(self) -> list[Part]:
        """Every part, each taken from the source (a `Streamed` one read through) if not yet."""
        for part in self._source:
            self._received.append(part)
            for _ in chunks_of(part):
                pass
        return list(self._received)

    def summary(self) -> Rows:
        """After `parts()` or `taken()`: the batch for the observers, a `Streamed` part as its
        summary (no row held whole), with the `decoded_bytes` of all of it."""
        summary = Rows()
        for part in self.taken():
            summary.extend(part.summary() if isinstance(part, Streamed) else part)
        return summary

    def whole(self) -> Rows:
        if self._whole is None:
            self._received.extend(self._source)
            self._whole = Rows()
            for part in self._received:
                self._whole.extend(part.whole() if isinstance(part, Streamed) else part)
            self._received = [self._whole]
        return self._whole
