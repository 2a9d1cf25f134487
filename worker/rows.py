"""From decoded queue messages to the rows of one SQLite transaction.

Each event is classified (standard, create adjustment, update adjustment), keyed, and
turned into a typed row; anything that cannot be stored exactly becomes a reject with its
reason, while the rest of its envelope is still stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from chalicelib.codec import CodecError, decode_body, dump_event_text, event_problem
from db.batch import (
    BOOL_FIELDS,
    EVENT_COLUMNS,
    INT_FIELDS,
    MONEY_FIELDS,
    TEXT_FIELDS,
    TIME_FIELDS,
    Rows,
)
from db.binding import NULL, to_null
from worker.coerce import (
    INT64_MAX,
    INT64_MIN,
    FieldError,
    iso_utc,
    strict_int,
    to_bool,
    to_epoch,
    to_int,
    to_micros,
    to_text,
)

MAX_EVENT_BYTES = 1024 * 1024
MAX_REJECT_RAW_CHARS = 1024 * 1024

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
_EMPTY_EVENT_ROW: list[Any] = [None] * len(EVENT_COLUMNS)
_BOUND_EVENT_ROW: list[Any] = [NULL] * len(EVENT_COLUMNS)
assert EVENT_COLUMNS[_MONEY_AT : _MONEY_AT + len(MONEY_FIELDS)] == [f"{m}_micros" for m in MONEY_FIELDS]
assert EVENT_COLUMNS[_HEAD_COLUMNS - 1] == "num" and EVENT_COLUMNS[-3:] == ["raw_json", "message_id", "ingested_at"]


def event_row(
    event: dict[str, Any], kind: str, raw: str, message_id: str | None, now: int, bound: bool = False
) -> tuple[Any, ...]:
    """`bound`: columns the event leaves empty hold `binding.NULL` (see `Batch.bound`)."""
    key, source = event_key(event)
    when = to_epoch(event.get("datetime"))
    get = event.get
    created = kind == CREATE or bool(to_bool(get("created_from_adjustment")))
    row = (_BOUND_EVENT_ROW if bound else _EMPTY_EVENT_ROW).copy()
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
        strict_int(get("num"), "num"),
    )
    money = _money(event)
    if bound:  # the columns filled for every event, often with None
        head, money = map(to_null, head, head), map(to_null, money, money)
    row[:_HEAD_COLUMNS] = head
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
    row[_MONEY_AT : _MONEY_AT + len(MONEY_FIELDS)] = money
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
        strict_int(event.get("num"), "num"),
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
    return (key, message_id, index, reason, raw, now)


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Batch(Rows):
    """Rows for one transaction, built here from queue messages (see `Rows`)."""

    def add_events(
        self, events: list[Any], message_id: str | None, now: int | None = None, raws: list[str] | None = None
    ) -> None:
        """`raws`, when given, is each event's `dump_event_text` already (see `Decoded.raw`)."""
        now = int(time.time()) if now is None else now
        for index, event in enumerate(events):
            if raws is not None:
                raw = raws[index]
            else:
                try:
                    raw = dump_event_text(event)
                except (ValueError, RecursionError):
                    self.rejects.append(
                        reject_row(message_id, index, "event cannot be serialised", repr(event)[:1000], now)
                    )
                    continue
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
                        self.events.append(event_row(event, kind, raw, message_id, now, self.bound))
                    continue
                except FieldError as exc:
                    problem = str(exc)
                except (ValueError, TypeError, ArithmeticError) as exc:
                    # A coercion we did not foresee: reject this event, never the whole batch.
                    problem = f"cannot be stored ({type(exc).__name__}: {str(exc)[:200]})"
            self.rejects.append(reject_row(message_id, index, f"event {index}: {problem}", raw, now))

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
        try:
            decoded = decode_body(body, max_decoded_bytes) if max_decoded_bytes else decode_body(body)
        except CodecError as exc:
            self.rejects.append(reject_row(message_id, None, f"message undecodable: {exc}", body, now))
            self.envelopes.append((message_id, now, receive_count, None, 0))
            return 0
        control = json.dumps(decoded.control, separators=(",", ":"), ensure_ascii=True) if decoded.control else None
        self.envelopes.append((message_id, now, receive_count, control, len(decoded.events)))
        self.add_events(decoded.events, message_id, now, decoded.raw)
        return len(decoded.events)
