"""Turn Firehose field values into column values without ever crashing on a type variant.

TUNE's own examples disagree on types (an id as 1 or "0", `datetime` as epoch or text), so
every coercer accepts the plausible forms and returns None for the rest; the raw JSON keeps
the original either way. Money and counts are stricter: a value that cannot be summed
exactly is an error the caller turns into a reject.

What the columns can hold, whatever arrives (the views' sums rely on these bounds):
- money: |amount| <= MAX_MONEY (1e9 units), so |micro-units| <= 1e15 per value;
- counts (`num`): |num| <= MAX_COUNT (1,000,000) per event or update;
- times: epoch seconds in [MIN_EPOCH, MAX_EPOCH] (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z),
  and the ISO text is present exactly when the epoch is.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from worker.errors import FieldError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MICROS = Decimal(1_000_000)
# Far beyond any real payout (one value is at most 1e15 micro-units).
MAX_MONEY = Decimal(10) ** 9
_MAX_MONEY_UNITS = 10**9
# One event or update counts at most a million (a conversion batch, not a counter's lifetime):
# far beyond TUNE's 1s and small deltas, and small enough that no realistic sum leaves 64 bits.
MAX_COUNT = 1_000_000
# The seconds a datetime can spell: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
MIN_EPOCH, MAX_EPOCH = -62_135_596_800, 253_402_300_799
# An epoch number this large or larger is in milliseconds (1e11 s would be the year 5138).
_MILLIS_FROM = 100_000_000_000
_MICRO_STEP = Decimal("0.000001")
# A decimal number as TUNE or a producer spells it in text (only to word a reject's reason).
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def to_int(value: Any) -> int | None:
    """Ids and small integers; None when absent, blank, non-numeric or out of 64-bit range."""
    if type(value) is int:
        return value if INT64_MIN <= value <= INT64_MAX else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() and INT64_MIN <= value <= INT64_MAX else None
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in ("-", "+") else text
        # isascii: "²".isdigit() is true, but int() refuses it. One sign at most: "--5" is no number.
        if digits.isascii() and digits.isdigit() and len(text) <= 20:
            number = int(text)
            return number if INT64_MIN <= number <= INT64_MAX else None
    return None


def to_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None  # nested objects stay in raw_json only


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


def to_bool(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return 1 if value else 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
    return None


def strict_int(value: Any, name: str) -> int | None:
    """Counts and keys: absent is None; present but not an exact 64-bit integer is an error."""
    if value is None or value == "":
        return None
    number = to_int(value)
    if number is None:
        raise FieldError(f"{name} must be a 64-bit integer, got {_preview(value)}")
    return number


def to_count(value: Any, name: str) -> int | None:
    """`num`: absent is None; present must be an integer within +-MAX_COUNT (else an error)."""
    if type(value) is int and -MAX_COUNT <= value <= MAX_COUNT:
        return value
    if value is None or value == "":
        return None
    number = to_int(value)
    if number is None and not (isinstance(value, int) and not isinstance(value, bool)):
        raise FieldError(f"{name} must be an integer, got {_preview(value)}")
    if number is None or not -MAX_COUNT <= number <= MAX_COUNT:
        raise FieldError(f"{name} is out of range (at most {MAX_COUNT:,} either way), got {_preview(value)}")
    return number


# Converted float amounts: payouts repeat (a few prices per offer), and Decimal arithmetic costs
# more than the rest of an event's row. Only successes are kept; the result depends on the value alone.
_FLOAT_MICROS: dict[float, int] = {}
_FLOAT_MICROS_MAX = 65_536


def to_micros(value: Any, name: str) -> int | None:
    """Money as integer micro-units, exactly: 1.23 -> 1230000, rounded half to even from the
    number's decimal text. Errors on non-numbers and beyond MAX_MONEY.

    A plain float's text is its shortest repr, which is the JSON text itself whenever that had
    at most 17 significant digits; a longer literal reaches here as a float that kept its text
    (`codec.parse_json`), so it is read from that text, not from the binary float."""
    if type(value) is float:
        micros = _FLOAT_MICROS.get(value)
        if micros is None:
            micros = _decimal_micros(value, name)
            if len(_FLOAT_MICROS) >= _FLOAT_MICROS_MAX:
                _FLOAT_MICROS.clear()
            _FLOAT_MICROS[value] = micros
        return micros
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise FieldError(f"{name} must be a number, got {value!r}")
    if type(value) is int:
        if -_MAX_MONEY_UNITS <= value <= _MAX_MONEY_UNITS:
            return value * 1_000_000
        raise FieldError(f"{name} is out of range: {_preview(value)}")
    return _decimal_micros(value, name)


def _preview(value: Any) -> str:
    """The start of a value for a reason, even for an integer str() refuses (over 4,300 digits)."""
    if isinstance(value, (list, dict)):  # str() of one nested ~1,000 deep raises RecursionError
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    if type(value) is int and not -(10**40) < value < 10**40:
        return f"an integer of about {int(math.log10(abs(value))) + 1} digits"
    return repr(str(value)[:40])


def _money_text(value: Any, name: str) -> str:
    """The decimal text an amount was written as (see `to_micros`)."""
    kind = type(value)
    if kind is float:
        # repr, not Decimal(value): Decimal(0.1) would carry the float's binary error into the sum.
        return repr(value)
    if isinstance(value, str):
        text = value.strip()
        # Decimal() also reads "1_000" and Arabic-Indic digits, which no sender means as money.
        if text.isascii() and "_" not in text:
            return text
    elif isinstance(value, float):  # codec.FloatText: a literal with more digits than a float holds
        literal = getattr(value, "text", None)
        return literal if isinstance(literal, str) else float.__repr__(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)
    raise FieldError(f"{name} must be a number, got {_preview(value)}")


def _decimal_micros(value: Any, name: str) -> int:
    kind = type(value)  # the two usual forms inline: this runs for every uncached amount
    if kind is float:
        text = repr(value)
    elif kind is str and value.isascii() and "_" not in value:
        text = value  # Decimal() itself allows whitespace around the number
    else:
        text = _money_text(value, name)
    try:
        amount = Decimal(text)
    except InvalidOperation:
        if _DECIMAL_TEXT.fullmatch(text):  # a number, with an exponent beyond what Decimal can hold
            raise FieldError(f"{name} is out of range: {_preview(value)}") from None
        raise FieldError(f"{name} must be a number, got {_preview(value)}") from None
    # copy_abs: abs() applies the context, and overflows on 1E+999999999999999999.
    if not amount.is_finite() or amount.copy_abs() > MAX_MONEY:
        raise FieldError(f"{name} is out of range: {_preview(value)}")
    # quantize rounds once, from every digit (amount * MICROS would first round to 28 digits);
    # within MAX_MONEY the result has at most 16 digits, so both steps are exact.
    return int(amount.quantize(_MICRO_STEP, rounding=ROUND_HALF_EVEN) * MICROS)


_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d")


def to_epoch(value: Any) -> int | None:
    """Epoch seconds from an epoch number (seconds or milliseconds) or a date-time string.

    Strings without an offset are read as UTC (TUNE does not say which zone they use; the raw
    value is kept next to this column). Anything outside MIN_EPOCH..MAX_EPOCH is None, so
    `iso_utc` can spell every value this returns.
    """
    if type(value) is int and -_MILLIS_FROM < value < _MILLIS_FROM:  # the usual form: epoch seconds
        return value if value >= MIN_EPOCH else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return _epoch_of_number(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    unsigned = text[1:] if text[:1] == "-" else text
    if unsigned.isascii() and unsigned.replace(".", "", 1).isdigit():
        try:
            return _epoch_of_number(float(text) if "." in text else int(text))
        except ValueError:  # int() refuses over 4,300 digits: far out of range anyway
            return None
    parsed: datetime | None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
        for fmt in _FORMATS:
            try:
                parsed = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        # floor: 23:59:59.5 is in the second 23:59:59, before 1970 too (int() would round up there).
        seconds = math.floor(parsed.timestamp())
    except (OverflowError, ValueError):
        return None
    # An offset can move year 1 or 9999 outside the range (0001-01-01T00:00:00+01:00).
    return seconds if MIN_EPOCH <= seconds <= MAX_EPOCH else None


def _epoch_of_number(value: int | float) -> int | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not -1_000_000_000_000_000 <= value <= 1_000_000_000_000_000:
        return None  # beyond year 9999 even in milliseconds; and a huge int / 1000 overflows a float
    seconds = value / 1000 if abs(value) >= _MILLIS_FROM else value
    return int(seconds) if MIN_EPOCH <= seconds <= MAX_EPOCH else None


def _iso_utc(epoch: int) -> str | None:
    """The reference spelling (`iso_utc` must give the same: a test compares them)."""
    try:
        moment = datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    # The year by hand: glibc's %Y writes year 1 as "1", which is not ISO 8601 and sorts wrong.
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"


# Formatting a datetime costs more than the rest of an event's time columns, and nearly every
# event has a second of its own, while a batch spans a few days: the date part is formatted once
# per day and the time of day is plain arithmetic.
_DAY_PREFIX: dict[int, str | None] = {}
_TWO_DIGITS = [f"{n:02d}" for n in range(60)]


def iso_utc(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    day, second = divmod(epoch, 86_400)
    prefix = _DAY_PREFIX.get(day, "")
    if prefix == "":
        if len(_DAY_PREFIX) >= 65_536:
            _DAY_PREFIX.clear()
        midnight = _iso_utc(day * 86_400)
        prefix = _DAY_PREFIX[day] = None if midnight is None else midnight[:-9]
    if prefix is None:
        return None
    hours, rest = divmod(second, 3600)
    minutes, seconds = divmod(rest, 60)
    return prefix + _TWO_DIGITS[hours] + ":" + _TWO_DIGITS[minutes] + ":" + _TWO_DIGITS[seconds] + "Z"
