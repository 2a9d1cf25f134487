"""Issue 12, finding 8 and its class: every stored value is of its column's type and range.

The boundary is the typed row: whatever JSON value arrives in a typed field (ids, ints, texts,
bools, times, money, `num`), building the rows either stores values of the column's type and
range, or rejects that one event with a reason naming why; it never raises. The property test
writes each event as JSON text (so a number keeps the decimal text it was written with, as TUNE
writes it) and drives `Batch.add_message`, the worker's own path from a queue body to rows. The
regressions go through the queue and the worker.

Bounds stated here (worker/coerce.py): money |x| <= 1e9 units (1e15 micro-units), `num`
|n| <= 1,000,000, times 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import marshal
import math
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from chalicelib.codec import decode_body, encode_envelope, parse_json
from chalicelib.queues.local import LocalQueue
from db.batch import ADJUSTMENT_COLUMNS, BOOL_FIELDS, EVENT_COLUMNS, INT_FIELDS, MONEY_FIELDS, TEXT_FIELDS, TIME_FIELDS
from tests.kit import deliver, drain, one, rows, send
from worker.coerce import MAX_COUNT, MAX_EPOCH, MIN_EPOCH
from worker.decoders import serve
from worker.rows import Batch

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_MICROS = 10**15


def examples(default: int, fuzz: int = 5000) -> int:
    """Bounded in `make test`; many more with FIREHOSE_FUZZ=1 (`make fuzz`)."""
    return fuzz if os.environ.get("FIREHOSE_FUZZ") == "1" else default


def tune_body(text: str) -> str:
    """A queue body as TUNE writes it, from envelope JSON text written by hand."""
    return base64.b64encode(gzip.compress(text.encode("utf-8"), mtime=0)).decode("ascii")


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "firehose.db"


# ---------------------------------------------------------------------------------------------
# Hostile JSON values, each as the literal text it is written with.

_DIGITY = [*"0123456789+-. eE_x,", "٥", "²", "١", "\u2003", "\t", "\n", "−"]


def _number_text() -> st.SearchStrategy[str]:
    """JSON number literals of any size and precision: 0, -0.0, 1e400, 0.1234565000...0001."""
    int_part = st.one_of(
        st.just("0"),
        st.from_regex(r"[1-9][0-9]{0,30}", fullmatch=True),
        st.integers(1, 10**400).map(str),
    )
    fraction = st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,45}", fullmatch=True))
    exponent = st.one_of(st.just(""), st.from_regex(r"[eE][+-]?[0-9]{1,3}", fullmatch=True))
    return st.tuples(st.sampled_from(["", "-"]), int_part, fraction, exponent).map("".join)


def _int_text() -> st.SearchStrategy[str]:
    edges = [
        INT64_MAX, INT64_MAX + 1, INT64_MIN, INT64_MIN - 1, MAX_COUNT, MAX_COUNT + 1, -MAX_COUNT - 1,
        10**9, 10**9 + 1, -(10**9) - 1, MIN_EPOCH, MIN_EPOCH - 1, MAX_EPOCH, MAX_EPOCH + 1, 10**15, 10**15 + 1,
    ]  # fmt: skip
    return st.one_of(
        st.sampled_from(edges),
        st.integers(-(2**70), 2**70),
        st.integers(-(10**400), 10**400),
    ).map(str)


def _near_half_micro_text() -> st.SearchStrategy[str]:
    """Amounts a hair above or below half a micro-unit, past the 17 digits a float holds and the
    28 of Decimal's default context: only rounding from every digit gets them right."""
    head = st.tuples(
        st.sampled_from(["", "-"]), st.integers(0, 10**9).map(str), st.from_regex(r"\.[0-9]{6}", fullmatch=True)
    ).map("".join)
    tail = st.tuples(
        st.sampled_from(["5", "4"]), st.sampled_from(range(41)).map(lambda n: "0" * n), st.sampled_from(["1", "9"])
    ).map(lambda t: t[0] + (t[1] if t[0] == "5" else t[1].replace("0", "9")) + t[2])
    return st.tuples(head, tail).map("".join)


def _int_string_text() -> st.SearchStrategy[str]:
    """Integers in text, with the signs and spaces people type: "--5", "+7", " -0 ", "5 5"."""
    return st.tuples(
        st.sampled_from(["", " ", "-", "+", "--", "+-", "-+", "--", "- ", "+-", "−", "\u2003"]),
        st.one_of(st.integers(0, 10**25).map(str), st.sampled_from(["", "٥", "²", "1_0", "5 5", "0x1"])),
        st.sampled_from(["", " ", "\t", "-", ".0", "e3"]),
    ).map(lambda t: json.dumps("".join(t), ensure_ascii=False))


def _epoch_text() -> st.SearchStrategy[str]:
    """Epoch seconds and milliseconds, in range and just past either end, as numbers and digits."""
    ms_edges = [MIN_EPOCH * 1000, MAX_EPOCH * 1000 + 999, MAX_EPOCH * 1000 + 1000, 10**11, 10**11 - 1, -(10**11)]
    numbers = st.one_of(st.integers(MIN_EPOCH - 10, MAX_EPOCH + 10), st.sampled_from(ms_edges))
    return st.one_of(
        numbers.map(str),
        numbers.map(lambda n: json.dumps(str(n))),
        st.floats(MIN_EPOCH - 10.0, 10.0**15).map(json.dumps),
        st.integers(0, 10**400).map(lambda n: json.dumps(str(n))),
    )


def _iso_text() -> st.SearchStrategy[str]:
    """Date-times from year 1 to 9999, with offsets that can carry them past either end."""
    offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
    aware = st.tuples(st.datetimes(), offsets).map(
        lambda p: p[0].replace(tzinfo=timezone(timedelta(minutes=p[1] // timedelta(minutes=1)))).isoformat()
    )
    edges = st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "0001-01-01T00:59:59+01:00",
            "0001-01-01T01:00:00+01:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59-00:01",
            "9999-12-31 23:59:59",
            "0999-06-01 12:00:00",
        ]
    )
    early = st.datetimes(max_value=datetime(999, 12, 31)).map(lambda d: d.isoformat(sep=" "))
    return st.one_of(edges, edges, aware, early, st.datetimes().map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")))


def _string_text() -> st.SearchStrategy[str]:
    digits_and_signs = st.text(st.sampled_from(_DIGITY), max_size=25)
    spaced_number = st.tuples(
        st.sampled_from(["", " ", "  ", "\t", "+", "--", "- "]), _number_text(), st.sampled_from(["", " ", "\n"])
    ).map("".join)
    return st.one_of(
        digits_and_signs,
        spaced_number,
        _int_text().map(lambda t: f" {t} "),
        _iso_text(),
        st.sampled_from(["", " ", "--5", "+5", "-", "NaN", "Infinity", "-inf", "1_000", "0x10", "true", "٥٥"]),
        st.text(max_size=30),
    ).map(lambda s: json.dumps(s, ensure_ascii=False))


def _nested_text() -> st.SearchStrategy[str]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5))
    nested = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=8,
    )
    return st.one_of(nested.map(json.dumps), st.integers(1, 60).map(lambda n: "[" * n + "]" * n))


def value_text() -> st.SearchStrategy[str]:
    """Any JSON value a hostile or confused sender may put in a typed field, as its literal text."""
    return st.one_of(
        _number_text(),
        _int_text(),
        st.floats().map(json.dumps),  # NaN and Infinity too, which Python's json reads
        _string_text(),
        st.sampled_from(["true", "false", "null", '"\\ud800"', '"a\\udfff"', '""']),
        _nested_text(),
    )


ADJUST_ACTIONS = ["1", "2", '"create"', '" UPDATE "', '"3"', "3", "true", "null", '"x"', "2.0", "[2]"]
FIELD_KINDS = [
    list(MONEY_FIELDS),
    ["datetime", *TIME_FIELDS],
    ["num"],
    list(INT_FIELDS),
    ["tune_event_id", "event_id", "adjustment_sequence_id"],
    list(TEXT_FIELDS),
    [*BOOL_FIELDS, "created_from_adjustment"],
]


def _values_for(name: str) -> st.SearchStrategy[str]:
    if name in MONEY_FIELDS:
        near_half = _near_half_micro_text()
        return st.one_of(_number_text(), near_half, near_half, near_half.map(json.dumps))
    if name in ("datetime", *TIME_FIELDS):
        return st.one_of(_epoch_text(), _iso_text().map(json.dumps))
    if name in INT_FIELDS or name in ("num", "adjustment_sequence_id", "tune_event_id", "event_id"):
        odd_numbers = st.sampled_from(["5.0", "1e3", "-0.0", "1.5", "1e19"])
        return st.one_of(_int_text(), _int_string_text(), _int_string_text(), odd_numbers)
    return value_text()


@st.composite
def hostile_event(draw: st.DrawFn) -> str:
    """One event as JSON text: an action, then hostile values in a few typed fields."""
    # Kinds first, then names: otherwise the ~60 text fields would crowd out the few times and amounts.
    # Few fields: one field's reject would hide what another's value would have stored.
    names = draw(st.lists(st.sampled_from(FIELD_KINDS).flatmap(st.sampled_from), min_size=1, max_size=3, unique=True))
    # Mostly a value of the kind the field expects, spelt in a hostile way; else anything.
    fields = {name: draw(st.one_of(_values_for(name), value_text())) for name in names}
    if draw(st.sampled_from([False, False, False, True])):
        updates = st.sampled_from(["2", '"update"', '" UPDATE "'])
        fields["adjust_action"] = draw(st.one_of(updates, st.sampled_from(ADJUST_ACTIONS)))
        if draw(st.booleans()):  # give many updates what they need, so their rows are built too
            fields.setdefault("adjustment_sequence_id", draw(st.integers(INT64_MIN, INT64_MAX).map(str)))
            fields.setdefault("tune_event_id", '"t-1"')
    pairs = [f"{json.dumps(name)}:{text}" for name, text in fields.items()]
    return "{" + ",".join(['"action":"conversion"', *pairs]) + "}"


# ---------------------------------------------------------------------------------------------
# What the rows must hold: the specification, written independently of worker/coerce.py.

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")
REJECT = object()


def exact_micros(text: str) -> int | object:
    """round_half_even(Decimal(text) * 10**6), computed with every digit; REJECT beyond 1e9."""
    amount = Decimal(text)
    if amount.copy_abs() > 10**9:
        return REJECT
    with localcontext(Context(prec=len(text) + 20, Emax=10**6, Emin=-(10**6))):
        return int((amount * 10**6).to_integral_value(rounding=ROUND_HALF_EVEN))


def expected_money(value: Any) -> int | object | None:
    """`value` as parsed with parse_float=Decimal: a float literal is its own decimal text."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or isinstance(value, (float, list, dict)):  # float: only NaN/Infinity
        return REJECT
    if isinstance(value, (int, Decimal)):
        return exact_micros(str(value))
    text = value.strip()
    return exact_micros(text) if text.isascii() and _NUMBER.fullmatch(text) else REJECT


def expected_int(value: Any) -> int | None:
    """An id or integer column: the integer the value spells, within 64 bits, else NULL."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        number = int(value) if math.isfinite(value) and value.is_integer() else None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        number = int(text) if text.isascii() and _INTEGER.fullmatch(text) and len(text) <= 20 else None
    else:
        number = None
    return number if number is not None and INT64_MIN <= number <= INT64_MAX else None


def expected_count(value: Any) -> int | object | None:
    if value is None or value == "":
        return None
    number = expected_int(value)
    big_int = isinstance(value, int) and not isinstance(value, bool)
    if number is None and not big_int:
        return REJECT
    return number if number is not None and -MAX_COUNT <= number <= MAX_COUNT else REJECT


def expected_kind(event: dict[str, Any]) -> str | object:
    if "adjust_action" not in event:
        return "standard"
    raw = event["adjust_action"]
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        return REJECT
    return {"1": "create", "create": "create", "2": "update", "update": "update"}.get(str(raw).strip().lower(), REJECT)


_EPOCH_DIGITS = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
SKIP = object()
_UNIX = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_of_number(value: float) -> int | None:
    """Seconds, or milliseconds from 1e11 up (1e11 s would be the year 5138)."""
    if abs(value) > 10**15 or not math.isfinite(value):  # in this order: 10**400 has no float
        return None
    seconds = value / 1000 if abs(value) >= 10**11 else value
    return int(seconds) if MIN_EPOCH <= seconds <= MAX_EPOCH else None


def expected_epoch(value: Any) -> int | object | None:
    """`datetime` as epoch seconds: from a number, digits, or ISO 8601 text (UTC when it has no
    offset); SKIP for the other text forms the worker also reads."""
    if value is None or isinstance(value, bool) or isinstance(value, (list, dict)):
        return None
    if isinstance(value, (int, float)):
        return _epoch_of_number(value)
    text = value.strip()
    if text.isascii() and _EPOCH_DIGITS.fullmatch(text):
        if "." in text:
            return _epoch_of_number(float(text))
        return _epoch_of_number(int(text)) if len(text) < 4300 else None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return SKIP
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = (moment - _UNIX) // timedelta(seconds=1)  # calendar arithmetic, floored
    return seconds if MIN_EPOCH <= seconds <= MAX_EPOCH else None


def has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    return isinstance(value, list) and any(has_surrogate(v) for v in value)


def iso_spelling(epoch: int) -> str:
    """ISO 8601 by calendar arithmetic, not by strftime: YYYY-MM-DDTHH:MM:SSZ."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=epoch)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def null(value: Any) -> Any:
    """NULL as a bound row holds it (a NaN, see db/binding.py) or as None."""
    return None if isinstance(value, float) and value != value else value


def assert_time_pair(epoch: Any, text: Any) -> None:
    """Both or neither, within year 1 .. 9999, and the text spells the epoch."""
    assert (epoch is None) == (text is None), (epoch, text)
    if epoch is not None:
        assert type(epoch) is int and MIN_EPOCH <= epoch <= MAX_EPOCH
        assert text == iso_spelling(epoch)


def assert_column_types(row: dict[str, Any]) -> None:
    """Every value is NULL or of its column's type: 64-bit ints, valid UTF-8 texts, 0/1 bools."""
    for name, value in row.items():
        if value is None:
            continue
        if name in TEXT_FIELDS or name in ("tune_event_id", "key_source", "action", "datetime_raw", "raw_json",
                                           "status", "transaction_id", "currency", "message_id"):  # fmt: skip
            assert type(value) is str, (name, value)
            value.encode("utf-8")  # raises on a lone surrogate: SQLite could not store it as text
        elif name in BOOL_FIELDS or name == "created_from_adjustment":
            assert value in (0, 1) and type(value) is int, (name, value)
        elif name not in ("event_time_utc", "adjustment_time_utc"):
            assert type(value) is int and INT64_MIN <= value <= INT64_MAX, (name, value)


def check_stored(event: dict[str, Any], spec: dict[str, Any], row: dict[str, Any], raw_text: str) -> None:
    """`event` as the worker parsed it; `spec` as parsed with parse_float=Decimal."""
    assert_column_types(row)
    for name in MONEY_FIELDS:
        assert row[f"{name}_micros"] == expected_money(spec.get(name)), name
    assert row["num"] == expected_count(event.get("num"))
    if "event_time" in row:
        assert_time_pair(row["event_time"], row["event_time_utc"])
        if (when := expected_epoch(event.get("datetime"))) is not SKIP:
            assert row["event_time"] == when, (event.get("datetime"), row["event_time"])
        for name in INT_FIELDS:
            assert row[name] == expected_int(event.get(name)), name
        for name in TIME_FIELDS:
            if (when := expected_epoch(event.get(name))) is not SKIP:
                assert row[name] == when, (name, event.get(name), row[name])
    else:
        assert_time_pair(row["adjustment_timestamp"], row["adjustment_time_utc"])
        if (when := expected_epoch(event.get("adjustment_timestamp"))) is not SKIP:
            assert row["adjustment_timestamp"] == when
        for name in ("offer_id", "affiliate_id", "advertiser_id", "goal_id"):
            assert row[name] == expected_int(event.get(name)), name
    # raw_json is what the standard library writes for the plain parse: the parse that keeps a
    # float's decimal text changes nothing that is stored as text.
    assert row["raw_json"] == json.dumps(json.loads(raw_text), separators=(",", ":"), ensure_ascii=False)


def must_reject_because(spec: dict[str, Any], event: dict[str, Any]) -> list[str]:
    """The words a reject's reason may name, when the event cannot be stored exactly; [] if it can."""
    reasons = [name for name in MONEY_FIELDS if expected_money(spec.get(name)) is REJECT]
    if expected_count(event.get("num")) is REJECT:
        reasons.append("num")
    if expected_kind(event) is REJECT:
        reasons.append("adjust_action")
    if has_surrogate(event):
        reasons.append("surrogate")
    if expected_kind(event) == "update":  # an update needs its own key and that of the event it changes
        sequence = event.get("adjustment_sequence_id")
        if sequence is None or sequence == "" or expected_int(sequence) is None:
            reasons.append("adjustment_sequence_id")
        target = event.get("tune_event_id") or event.get("event_id")
        if isinstance(target, bool) or not isinstance(target, (str, int)) or not str(target).strip():
            reasons.append("tune_event_id")
    return reasons


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_event())
@example('{"action":"click","offer_id":"--5"}')
@example('{"action":"click","datetime":"' + "1" * 400 + '"}')
@example('{"action":"click","datetime":' + "1" * 400 + "}")
@example('{"action":"click","datetime":"0001-01-01T00:00:00+01:00"}')
@example('{"action":"click","datetime":"0001-01-01T01:00:00+01:00"}')
@example('{"action":"click","payout":0.12345650000000000000001}')
@example('{"action":"click","payout":"0.1234565000000000000000000000000001"}')
@example('{"action":"click","num":9223372036854775807}')
@example('{"action":"click","adjust_action":2,"adjustment_sequence_id":"--5","tune_event_id":"t"}')
def test_any_value_in_any_typed_field_is_stored_in_range_or_rejected_with_a_reason(text: str) -> None:
    good = '{"action":"click","tune_event_id":"good","offer_id":1,"payout":0.5}'
    body = tune_body('{"producer":"test","events":[' + good + "," + text + "]}")
    batch = Batch()
    batch.add_message("m-1", body, 1, now=1_700_000_000)  # must not raise, whatever the values

    # What the helper process sends back must be plain types (marshal refuses a float subclass).
    parts = (batch.events, batch.adjustments, batch.envelopes, batch.rejects)
    assert repr(marshal.loads(marshal.dumps(parts))) == repr(parts)  # noqa: S302 - our own bytes

    event = parse_json(text.encode("utf-8"))
    spec = json.loads(text, parse_float=Decimal)
    stored = [dict(zip(EVENT_COLUMNS, map(null, r), strict=True)) for r in batch.events] + [
        dict(zip(ADJUSTMENT_COLUMNS, map(null, r), strict=True)) for r in batch.adjustments
    ]
    assert stored[0]["tune_event_id"] == "good" and stored[0]["payout_micros"] == 500_000
    because = must_reject_because(spec, event)
    if len(stored) == 2:
        hypothesis_event(f"stored as {'an update' if batch.adjustments else 'an event'}")
        assert not because, f"stored although {because} cannot be stored exactly"
        assert batch.rejects == []
        check_stored(event, spec, stored[1], text)
        return
    [reject] = batch.rejects
    reason = reject[3]
    assert reason.startswith("event 1: ") and reject[2] == 1
    assert "cannot be stored (" not in reason, f"an unforeseen error, not a named reason: {reason}"
    assert any(word in reason for word in because), (because, reason)
    hypothesis_event(f"rejected: {' '.join(sorted(set(because)))[:60]}")


# ---------------------------------------------------------------------------------------------
# The regressions of finding 8's value items, through the queue and the worker.


def test_a_malformed_id_is_null_not_a_rejected_event(local_queue: LocalQueue, db: Path) -> None:
    deliver(local_queue, [{"action": "click", "tune_event_id": "dash", "offer_id": "--5", "affiliate_id": " +7 "}])
    drain(local_queue, db)
    assert rows(db, "SELECT tune_event_id, offer_id, affiliate_id FROM events") == [("dash", None, 7)]
    assert one(db, "SELECT count(*) FROM rejects") == 0


def test_a_400_digit_datetime_is_null_and_kept_raw(local_queue: LocalQueue, db: Path) -> None:
    digits = "9" * 400
    deliver(
        local_queue,
        [
            {"action": "click", "tune_event_id": "as-text", "datetime": digits},
            {"action": "click", "tune_event_id": "as-number", "datetime": int(digits)},
        ],
    )
    drain(local_queue, db)
    assert rows(db, "SELECT tune_event_id, event_time, event_time_utc, datetime_raw FROM events ORDER BY 1") == [
        ("as-number", None, None, digits),
        ("as-text", None, None, digits),
    ]
    assert one(db, "SELECT count(*) FROM rejects") == 0


def test_times_at_year_1_and_9999_have_both_columns_or_neither(local_queue: LocalQueue, db: Path) -> None:
    times = {
        "before-year-1": "0001-01-01T00:00:00+01:00",  # 0000-12-31T23:00Z: no such year
        "first-second": "0001-01-01T01:00:00+01:00",
        "last-second": "9999-12-31T23:59:59Z",
        "after-9999": "9999-12-31T23:59:59-01:00",
    }
    deliver(local_queue, [{"action": "click", "tune_event_id": k, "datetime": v} for k, v in times.items()])
    drain(local_queue, db)
    assert dict(
        (k, (t, u)) for k, t, u in rows(db, "SELECT tune_event_id, event_time, event_time_utc FROM events")
    ) == {
        "before-year-1": (None, None),
        "first-second": (MIN_EPOCH, "0001-01-01T00:00:00Z"),
        "last-second": (MAX_EPOCH, "9999-12-31T23:59:59Z"),
        "after-9999": (None, None),
    }


def test_money_is_rounded_from_every_digit_of_its_text(local_queue: LocalQueue, db: Path) -> None:
    # Written by hand: 23 and 37 significant digits, more than a float (17) or Decimal's default
    # context (28) holds. Both lie just above a half micro-unit, so half-to-even must round up;
    # read through a float (0.1234565) or rounded to 28 digits first, they would round down to even.
    text = (
        '{"events": [{"action": "conversion", "tune_event_id": "exact", '
        '"payout": 0.12345650000000000000001, "revenue": "2.500000500000000000000000000000000001"}]}'
    )
    send(local_queue, [tune_body(text)])
    drain(local_queue, db)
    assert rows(db, "SELECT payout_micros, revenue_micros FROM events") == [(123_457, 2_500_001)]
    # raw_json is unchanged by the exact reading: the float as the standard library writes it.
    assert json.loads(one(db, "SELECT raw_json FROM events"))["payout"] == 0.1234565


def test_num_beyond_a_million_is_rejected_and_the_views_keep_working(local_queue: LocalQueue, db: Path) -> None:
    huge = {"action": "conversion", "offer_id": 1, "affiliate_id": 1, "datetime": 1_700_000_000, "payout": 1}
    deliver(
        local_queue,
        [
            {**huge, "tune_event_id": "h1", "num": 9223372036854775807},
            {**huge, "tune_event_id": "h2", "num": 9223372036854775807},
            {**huge, "tune_event_id": "ok", "num": MAX_COUNT},
            {"action": "conversion", "adjust_action": 2, "tune_event_id": "ok", "adjustment_sequence_id": 1,
             "num": -MAX_COUNT - 1},
        ],
    )  # fmt: skip
    drain(local_queue, db)
    reasons = [r for (r,) in rows(db, "SELECT reason FROM rejects ORDER BY event_index")]
    assert len(reasons) == 3 and all("num is out of range" in r for r in reasons), reasons
    assert rows(db, "SELECT tune_event_id, num FROM events") == [("ok", MAX_COUNT)]
    assert len(rows(db, "SELECT * FROM daily_stats")) == 1  # "integer overflow" when h1 and h2 were stored


def test_the_decoding_helper_sends_only_plain_values(tmp_path: Path) -> None:
    """Long float literals in every kind of field: the helper's frames still marshal (a float
    that keeps its text must never reach a row), and the rows equal those built here."""
    long = "0.12345678901234567890123"
    fields = [*INT_FIELDS[:3], *TEXT_FIELDS[:3], *BOOL_FIELDS[:1], *TIME_FIELDS, *MONEY_FIELDS, "num", "datetime"]
    event = ",".join(f'"{name}":{long}' for name in fields if name != "num")
    text = (
        '{"events":[{"action":"click","tune_event_id":"f","num":1.0000000000000000001,'
        + event
        + "}],"
        + ('"control":' + long + "}")
    )
    item = ("m-1", tune_body(text), 1)
    request = marshal.dumps(([item], 32 * 1024 * 1024, 1_700_000_000))
    stdin = io.BytesIO(len(request).to_bytes(8, "big") + request)
    stdout = io.BytesIO()
    serve(stdin, stdout)  # raises ValueError("unmarshallable object") if a row holds a float subclass
    frames = stdout.getvalue()
    size = int.from_bytes(frames[8:16], "big")  # after the empty "ready" frame
    # (events, adjustments, envelopes, rejects, ...): a row marshal refuses rejects the message whole
    parts = marshal.loads(frames[16 : 16 + size])  # noqa: S302 - our own bytes
    events, envelopes, rejects = parts[0], parts[2], parts[3]
    here = Batch()
    here.add_message("m-1", item[1], 1, 32 * 1024 * 1024, 1_700_000_000)
    assert rejects == [] and len(events) == 1
    assert repr((events, envelopes)) == repr((here.events, here.envelopes))  # NaN-safe comparison
    row = dict(zip(EVENT_COLUMNS, events[0], strict=True))
    assert row["payout_micros"] == 123_457 and row["num"] == 1


def test_a_float_keeps_its_text_only_where_the_float_loses_digits() -> None:
    """The slow path's floats are plain floats unless the literal has digits a float cannot hold;
    those still write back as before (raw_json and the endpoint's re-encoding do not change)."""
    doc = parse_json(b"[0.1234565, 1234567.123456789, 1e400, 0.12345650000000000000001, 100.50000000000000000]")
    assert [type(x) is float for x in doc] == [True, True, True, False, False]
    assert [getattr(x, "text", None) for x in doc[3:]] == ["0.12345650000000000000001", "100.50000000000000000"]
    assert json.dumps(doc) == "[0.1234565, 1234567.123456789, Infinity, 0.1234565, 100.5]"
    # The fast path (orjson, canonical envelopes only) never sees such a literal: it re-serialises
    # to other bytes, so the envelope takes the slow path.
    body = encode_envelope([b'{"action":"click","tune_event_id":"a","payout":0.12345650000000000000001}'])
    assert type(decode_body(body).events[0]["payout"]) is not float
