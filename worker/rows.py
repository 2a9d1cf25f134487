"""From decoded queue messages to the rows of one SQLite transaction.

Each event is classified (standard, create adjustment, update adjustment), keyed, and
turned into a typed row; anything that cannot be stored exactly becomes a reject with its
reason, while the rest of its envelope is still stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Protocol

from chalicelib.codec import (
    DEFAULT_MAX_DECODED_BYTES,
    MAX_EVENT_BYTES,
    CodecError,
    EventStream,
    dump_event_text,
    event_problem,
    read_body,
)
from db.batch import (
    BOOL_FIELDS,
    EVENT_COLUMNS,
    INT_FIELDS,
    MONEY_FIELDS,
    TEXT_FIELDS,
    TIME_FIELDS,
    Rows,
)
from worker.coerce import (
    INT64_MAX,
    INT64_MIN,
    iso_utc,
    strict_int,
    to_bool,
    to_count,
    to_epoch,
    to_int,
    to_micros,
    to_text,
)
from worker.errors import FieldError

MAX_REJECT_RAW_CHARS = 1024 * 1024


def _nan_binds_as_null() -> bool:
    db = sqlite3.connect(":memory:")
    try:
        return bool(db.execute("SELECT typeof(?)", (float("nan"),)).fetchone()[0] == "null")
    finally:
        db.close()


# How an empty column is built. Python's sqlite3 binds None through its adapter registry (a tuple, a
# dict lookup and two attribute lookups per value), which costs more than the rest of an events row
# together: most of its ~100 columns are empty. A float NaN binds directly and SQLite stores it as
# NULL (sqlite3VdbeMemSetDouble never stores a NaN), so the rows are built with NaN there and the
# store binds them as they are (bench/RESULTS.md measured the difference). No value is ever a NaN of
# its own: the coercers turn non-finite numbers into None or a reject. The behaviour is checked once
# per process; NULL stays None if a SQLite build ever differs. Only this module knows.
NULL: float | None = float("nan") if _nan_binds_as_null() else None
_NULLS: dict[Any, Any] = {None: NULL}
to_null = _NULLS.get  # to_null(value, value): the value as it binds fastest


def empty_as_none(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row with None for an empty column, however it was built (NaN is the only value not equal
    to itself; identity would not do: rows from the decoding helper are unmarshalled copies)."""
    return tuple([v if v == v else None for v in row])


def build_empty_as_none() -> None:
    """Build rows with None for an empty column from now on, in this process: what PostgreSQL's COPY
    takes fastest (a NaN there costs a call per value; db/postgres/store.py turns one into NULL all
    the same, so rows built either way are stored alike)."""
    global NULL
    NULL = None
    _NULLS[None] = None
    _EMPTY_EVENT_ROW[:] = [None] * len(_EMPTY_EVENT_ROW)


STANDARD, CREATE, UPDATE = "standard", "create", "update"
_ADJUST_ACTIONS = {"1": CREATE, "create": CREATE, "2": UPDATE, "update": UPDATE}


def canonical_json(event: Any) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_kind(event: dict[str, Any]) -> str:
    """standard, create or update; adjust_action may be 1/2, "1"/"2" or create/update in any case."""
    if "adjust_action" not in event:
        return STANDARD
    raw = event["adjust_action"]
    kind = (
        _ADJUST_ACTIONS.get(str(raw).strip().lower())
        if isinstance(raw, (int, str)) and not isinstance(raw, bool)
        else None
    )
    if kind is None:
        raise FieldError(f"adjust_action must be 1, 2, 'create' or 'update', got {str(raw)[:40]!r}")
    return kind


def event_key(event: dict[str, Any]) -> tuple[str, str]:
    """(key, where it came from): tune_event_id, else event_id, else a hash of the content."""
    for name in ("tune_event_id", "event_id"):
        value = event.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip(), name
    digest = hashlib.sha256(canonical_json(event).encode("utf-8", "surrogatepass")).hexdigest()
    return "sha256:" + digest[:40], "hash"


def _money(event: dict[str, Any]) -> list[int | None]:
    return [to_micros(event.get(m), m) for m in MONEY_FIELDS]


_INT, _TEXT, _BOOL, _TIME = "int", "text", "bool", "time"
# Field name -> (its column in an events row, how to coerce it); iterating the few fields an
# event has costs less than looking up every one of the ~90 columns in each event.
_FIELD_SLOTS: dict[str, tuple[int, str]] = {
    name: (EVENT_COLUMNS.index(name), kind)
    for kind, names in ((_INT, INT_FIELDS), (_TEXT, TEXT_FIELDS), (_BOOL, BOOL_FIELDS), (_TIME, TIME_FIELDS))
    for name in names
}
_HEAD_COLUMNS = 8  # tune_event_id .. num, filled first
_MONEY_AT = EVENT_COLUMNS.index("payout_micros")
_EMPTY_EVENT_ROW: list[Any] = [NULL] * len(EVENT_COLUMNS)
assert EVENT_COLUMNS[_MONEY_AT : _MONEY_AT + len(MONEY_FIELDS)] == [f"{m}_micros" for m in MONEY_FIELDS]
assert EVENT_COLUMNS[_HEAD_COLUMNS - 1] == "num" and EVENT_COLUMNS[-3:] == ["raw_json", "message_id", "ingested_at"]


def event_row(event: dict[str, Any], kind: str, raw: str, message_id: str | None, now: int) -> tuple[Any, ...]:
    """The events row; the columns the event leaves empty hold `NULL`."""
    key, source = event_key(event)
    when = to_epoch(event.get("datetime"))
    get = event.get
    created = kind == CREATE or bool(to_bool(get("created_from_adjustment")))
    row = _EMPTY_EVENT_ROW.copy()
    # Only the head (num) and the money columns can raise; they are coerced in column order, so a
    # reject names the first bad field.
    head = (
        key,
        source,
        event["action"].strip().lower(),
        int(created),
        when,
        iso_utc(when),
        to_text(get("datetime")),
        to_count(get("num"), "num"),
    )
    money = _money(event)
    # The columns filled for every event, often with None.
    row[:_HEAD_COLUMNS] = map(to_null, head, head)
    slots = _FIELD_SLOTS
    for name, value in event.items():
        slot = slots.get(name)
        if slot is None or value is None:  # not a typed column, or null: the column stays NULL
            continue
        index, coerce = slot
        # Most values already have the column's type: skip the call for those.
        if coerce is _TEXT:
            row[index] = value if type(value) is str else to_text(value)
        elif coerce is _INT:
            row[index] = value if type(value) is int and INT64_MIN <= value <= INT64_MAX else to_int(value)
        elif coerce is _BOOL:
            row[index] = to_bool(value)
        else:
            row[index] = to_epoch(value)
    row[_MONEY_AT : _MONEY_AT + len(MONEY_FIELDS)] = map(to_null, money, money)
    row[-3:] = (raw, message_id, now)
    return tuple(row)


def adjustment_row(event: dict[str, Any], raw: str, message_id: str | None, now: int) -> tuple[Any, ...]:
    sequence = strict_int(event.get("adjustment_sequence_id"), "adjustment_sequence_id")
    if sequence is None:
        raise FieldError("update has no adjustment_sequence_id, so it could be applied twice")
    target = event.get("tune_event_id") or event.get("event_id")
    if not isinstance(target, (str, int)) or isinstance(target, bool) or not str(target).strip():
        raise FieldError("update has no tune_event_id naming the event it changes")
    at = to_epoch(event.get("adjustment_timestamp"))
    return (
        sequence,
        str(target).strip(),
        event["action"].strip().lower(),
        to_count(event.get("num"), "num"),
        *_money(event),
        at,
        iso_utc(at),
        to_text(event.get("status")),
        to_text(event.get("transaction_id")),
        to_int(event.get("offer_id")),
        to_int(event.get("affiliate_id")),
        to_int(event.get("advertiser_id")),
        to_int(event.get("goal_id")),
        to_text(event.get("currency")),
        raw,
        message_id,
        now,
    )


def reject_row(message_id: str | None, index: int | None, reason: str, raw: str, now: int) -> tuple[Any, ...]:
    # Keyed by content, not position: the same bad input delivered again (or re-split) adds no row.
    scope = "message" if index is None else "event"
    key = hashlib.sha256(f"{scope}\0{raw}".encode("utf-8", "surrogatepass")).hexdigest()
    if len(raw) > MAX_REJECT_RAW_CHARS:
        raw = raw[:MAX_REJECT_RAW_CHARS] + f"... [truncated: {len(raw)} characters in all]"
    return (key, message_id, index, _storable_text(reason), _storable_text(raw), now)


def _storable_text(text: str) -> str:
    """`text` as SQLite can hold it: a lone UTF-16 surrogate (valid in JSON, not in UTF-8) is escaped."""
    if text.isascii() or _is_utf8_encodable(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    """An unforeseen error, named for a reject's reason (never raising itself)."""
    try:
        detail = str(exc)[:200]
    except Exception:  # a hostile value's __str__ must not escape either
        detail = ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:1000]
    except Exception:  # too deep to print, say
        return f"<{type(value).__name__} that cannot be printed>"


class Sink(Protocol):
    """Where a batch puts its rows as they pile up (`Batch.spill_to`)."""

    def put(self, rows: Rows) -> None: ...

    def reset(self) -> None:
        """Forget every row put so far (the message is rejected whole after all)."""
        ...


class Batch(Rows):
    """Rows for one transaction, built here from queue messages (see `Rows`).

    Nothing a message holds can make these methods raise: what cannot be decoded or stored becomes
    a reject row with its reason (the message's, or the one event's), and the rest goes on.

    A batch that spills (`spill_to`) hands its rows to the sink every `spill_bytes` of decoded text
    while a large message is read event by event, so it never holds them all; `size` and
    `decoded_bytes` then count only what it still holds and everything, respectively, and
    `spilled_size` what went to the sink."""

    _sink: Sink | None = None
    spill_bytes = 1024 * 1024
    spilled_size = 0
    _spilled_bytes = 0

    def spill_to(self, sink: Sink, spill_bytes: int) -> None:
        assert not (self.size or self.envelopes or self.decoded_bytes), "only an empty batch spills"
        self._sink, self.spill_bytes = sink, spill_bytes

    def _spill(self) -> None:
        assert self._sink is not None
        self._sink.put(Rows(self.events, self.adjustments, self.envelopes, self.rejects))
        self.spilled_size += self.size
        self.events, self.adjustments, self.envelopes, self.rejects = [], [], [], []
        self._spilled_bytes = self.decoded_bytes

    def add_events(
        self, events: list[Any], message_id: str | None, now: int | None = None, raws: list[str] | None = None
    ) -> None:
        """`raws`, when given, is each event's `dump_event_text` already (see `Decoded.raw`)."""
        now = int(time.time()) if now is None else now
        for index, event in enumerate(events):
            raw = raws[index] if raws is not None else self._raw(index, event, message_id, now)
            if raw is None:
                continue
            try:
                self._add_event(index, event, raw, message_id, now)
            except Exception as exc:  # unforeseen: reject this event, never its message or batch
                self._reject(message_id, index, f"event {index}: cannot be stored ({_describe(exc)})", raw, now)

    def _raw(self, index: int, event: Any, message_id: str | None, now: int) -> str | None:
        """The event's JSON as stored (`dump_event_text`), or None when it has none: then rejected."""
        try:
            return dump_event_text(event)
        except Exception:  # too deep, or not JSON at all
            self._reject(message_id, index, "event cannot be serialised", _safe_repr(event), now)
            return None

    def _add_event(self, index: int, event: Any, raw: str, message_id: str | None, now: int) -> None:
        problem = event_problem(event)
        if problem is None and len(raw) > MAX_EVENT_BYTES:
            problem = f"is {len(raw)} bytes, over the {MAX_EVENT_BYTES} byte per-event limit"
        if not raw.isascii() and not _is_utf8_encodable(raw):
            # JSON allows "\ud800" but SQLite text must be valid UTF-8: keep it, escaped, in rejects.
            problem = problem or "holds a lone UTF-16 surrogate, which is not valid Unicode text"
            raw = json.dumps(event, separators=(",", ":"), ensure_ascii=True)
        if problem is None:
            try:
                kind = event_kind(event)
                if kind == UPDATE:
                    self.adjustments.append(adjustment_row(event, raw, message_id, now))
                else:
                    self.events.append(event_row(event, kind, raw, message_id, now))
                self.decoded_bytes += len(raw)
                return
            except FieldError as exc:
                problem = str(exc)
        self._reject(message_id, index, f"event {index}: {problem}", raw, now)

    def _reject(self, message_id: str | None, index: int | None, reason: str, raw: str, now: int) -> None:
        self.rejects.append(reject_row(message_id, index, reason, raw, now))
        self.decoded_bytes += min(len(raw), MAX_REJECT_RAW_CHARS)

    def add_message(
        self,
        message_id: str,
        body: str,
        receive_count: int | None = None,
        max_decoded_bytes: int | None = None,
        now: int | None = None,
    ) -> int:
        """Decode one queue message into this batch; return its number of events (0 if undecodable)."""
        now = int(time.time()) if now is None else now
        mark = self._mark()
        try:
            try:
                decoded = read_body(body, max_decoded_bytes or DEFAULT_MAX_DECODED_BYTES)
                if isinstance(decoded, EventStream):
                    count = self._add_stream(decoded, message_id, receive_count, now)
                    if count is not None:
                        return count
                    self._rewind(mark)  # not read event by event after all: read it whole
                    decoded = decoded.whole()
            except CodecError as exc:
                self.reject_message(message_id, body, receive_count, f"message undecodable: {exc}", now)
                return 0
            control = json.dumps(decoded.control, separators=(",", ":"), ensure_ascii=True) if decoded.control else None
            self.envelopes.append((message_id, now, receive_count, control, len(decoded.events)))
            self.add_events(decoded.events, message_id, now, decoded.raw)
            return len(decoded.events)
        except Exception as exc:  # unforeseen: this message is rejected whole, the batch goes on
            self._rewind(mark)
            self.reject_message(message_id, body, receive_count, f"message undecodable: {_describe(exc)}", now)
            return 0

    def _add_stream(self, stream: EventStream, message_id: str, receive_count: int | None, now: int) -> int | None:
        """A large envelope's events, each turned into its row as it is parsed (as `add_events` does)
        and then dropped; None when the stream stopped early (see `EventStream`)."""
        for index, event in enumerate(stream):
            raw = self._raw(index, event, message_id, now)
            if raw is not None:
                try:
                    self._add_event(index, event, raw, message_id, now)
                except Exception as exc:  # unforeseen: reject this event, never its message or batch
                    self._reject(message_id, index, f"event {index}: cannot be stored ({_describe(exc)})", raw, now)
            if self._sink is not None and self.decoded_bytes - self._spilled_bytes >= self.spill_bytes:
                self._spill()
        if stream.unusual:
            return None
        control = json.dumps(stream.control, separators=(",", ":"), ensure_ascii=True) if stream.control else None
        self.envelopes.append((message_id, now, receive_count, control, stream.count))
        return stream.count

    def reject_message(self, message_id: str, body: str, receive_count: int | None, reason: str, now: int) -> None:
        self._reject(message_id, None, reason, body, now)
        self.envelopes.append((message_id, now, receive_count, None, 0))

    def _mark(self) -> tuple[int, int, int, int, int]:
        return len(self.events), len(self.adjustments), len(self.envelopes), len(self.rejects), self.decoded_bytes

    def _rewind(self, mark: tuple[int, int, int, int, int]) -> None:
        """Forget what a message half-added before it failed, so it is stored whole or rejected whole."""
        if self.spilled_size or self._spilled_bytes:  # only an empty batch spills: the mark is its start
            assert self._sink is not None
            self._sink.reset()
            self.spilled_size = self._spilled_bytes = 0
        del self.events[mark[0] :], self.adjustments[mark[1] :], self.envelopes[mark[2] :], self.rejects[mark[3] :]
        self.decoded_bytes = mark[4]
