"""Turn Firehose field values into column values without ever crashing on a type variant.

TUNE's own examples disagree on types (an id as 1 or "0", `datetime` as epoch or text), so
every coercer accepts the plausible forms and returns None for the rest; the raw JSON keeps
the original either way. Money and counts are stricter: a value that cannot be summed
exactly is an error the caller turns into a reject.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MICROS = Decimal(1_000_000)
# Far beyond any real payout; keeps every sum of micro-units inside 64 bits.
MAX_MONEY = Decimal(10) ** 9


class FieldError(ValueError):
    """A value that must be exact (money, counts, keys) cannot be stored exactly."""


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
        # isascii: "²".isdigit() is true, but int() refuses it.
        if text.isascii() and text.lstrip("-").isdigit() and len(text) <= 20:
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
        raise FieldError(f"{name} must be a 64-bit integer, got {str(value)[:40]!r}")
    return number


# Converted float amounts: payouts repeat (a few prices per offer), and Decimal arithmetic costs
# more than the rest of an event's row. Only successes are kept; the result depends on the value alone.
_FLOAT_MICROS: dict[float, int] = {}
_FLOAT_MICROS_MAX = 65_536


def to_micros(value: Any, name: str) -> int | None:
    """Money as integer micro-units, exactly: 1.23 -> 1230000. Errors on non-numbers."""
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
    if type(value) is int and -1_000_000_000 <= value <= 1_000_000_000:
        return value * 1_000_000
    return _decimal_micros(value, name)


def _decimal_micros(value: Any, name: str) -> int:
    try:
        # str() first: Decimal(0.1) would carry the float's binary error into the sum.
        amount = Decimal(value.strip() if isinstance(value, str) else str(value))
    except (InvalidOperation, ValueError, TypeError):
        raise FieldError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not amount.is_finite() or abs(amount) > MAX_MONEY:
        raise FieldError(f"{name} is out of range: {str(value)[:40]!r}")
    return int((amount * MICROS).to_integral_value(rounding=ROUND_HALF_EVEN))


_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d")


def to_epoch(value: Any) -> int | None:
    """Epoch seconds from an epoch number (seconds or milliseconds) or a date-time string.

    Strings without an offset are read as UTC (TUNE does not say which zone they use; the raw
    value is kept next to this column).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        seconds = value / 1000 if abs(value) >= 100_000_000_000 else value
        return int(seconds) if -62_135_596_800 <= seconds <= 253_402_300_799 else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    if text.lstrip("-").replace(".", "", 1).isdigit():
        try:
            return to_epoch(float(text) if "." in text else int(text))
        except ValueError:
            return None
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
    return int(parsed.timestamp())


def _iso_utc(epoch: int) -> str | None:
    """The reference spelling (`iso_utc` must give the same: a test compares them)."""
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


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
