"""The one wire format: TUNE's envelope, gzipped then base64-encoded.

Decoding accepts what TUNE sends (base64(gzip(JSON))) and the forms a producer or a test is
likely to hand us (gzip(JSON), plain JSON). Encoding always writes TUNE's form, so the worker
only ever needs this module to read the queue.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

try:  # orjson writes these events ~4x faster; dump_event* fall back to json where they would differ
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a listed dependency, but optional
    _orjson = None  # type: ignore[assignment]

GZIP_MAGIC = b"\x1f\x8b"
# wbits=47 (32 + 15): zlib auto-detects a gzip or zlib header.
_AUTO_HEADER_WBITS = 47
DEFAULT_MAX_DECODED_BYTES = 32 * 1024 * 1024
MAX_EVENT_BYTES = 1024 * 1024  # one event's JSON; the worker rejects larger ones too
ENVELOPE_EVENTS_KEY = "events"
PRODUCER = "tune-firehose"


class CodecError(ValueError):
    """A body that cannot be decoded; the message says what is wrong and where."""


class EventTooLarge(CodecError):
    """One event alone does not fit in a queue message."""


@dataclass
class Decoded:
    events: list[Any]
    control: dict[str, Any] = field(default_factory=dict)
    # Each event's compact JSON (exactly what `dump_event_text` returns), when decoding already had
    # it; None otherwise. Not part of equality: it is a by-product, not content.
    raw: list[str] | None = field(default=None, compare=False, repr=False)


def inflate(data: bytes, max_bytes: int) -> bytes:
    """Decompress gzip/zlib data, refusing to produce more than `max_bytes` (gzip bombs)."""
    inflater = zlib.decompressobj(_AUTO_HEADER_WBITS)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise CodecError(f"gzip data is corrupt: {exc}") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise CodecError(f"decompressed body exceeds the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise CodecError("gzip data is truncated")
    return out


def _unbase64(text: str) -> bytes:
    compact = "".join(text.split())
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(compact)
        except (binascii.Error, ValueError):
            raise CodecError("body is neither JSON, gzip nor valid base64") from None


def body_to_json_bytes(body: str | bytes, max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> bytes:
    """Strip the transport layers (base64, gzip) and return the JSON document's bytes."""
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    stripped = raw.strip()
    if not stripped:
        raise CodecError("body is empty")
    if stripped[:2] == GZIP_MAGIC:
        return inflate(stripped, max_bytes)
    if stripped[:1] in (b"{", b"["):
        if len(stripped) > max_bytes:
            raise CodecError(f"JSON body exceeds the limit of {max_bytes} bytes")
        return stripped
    try:
        text = stripped.decode("ascii")
    except UnicodeDecodeError:
        raise CodecError("body is neither JSON, gzip nor base64 (it holds non-ASCII bytes)") from None
    if text[0] in '"-0123456789' or text in ("true", "false", "null"):
        try:
            json.loads(text)
            return stripped  # a JSON scalar: split_envelope names its type
        except ValueError:
            pass
    inner = _unbase64(text)
    if inner[:2] == GZIP_MAGIC or inner[:1] == b"\x78":  # gzip, or zlib's header byte
        return inflate(inner, max_bytes)
    if inner.lstrip()[:1] in (b"{", b"["):
        return inner
    raise CodecError("base64 body does not hold gzip or JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: refuse an object that names a key twice (json.loads would keep the last)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise CodecError(f"duplicate key {key[:80]!r} in a JSON object (which value is meant is ambiguous)")
            seen.add(key)
    return obj


def parse_json(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise CodecError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise CodecError("JSON is nested too deeply") from None
    except CodecError:
        raise
    except ValueError as exc:  # e.g. an integer literal longer than Python's 4,300-digit limit
        raise CodecError(f"invalid JSON: {str(exc)[:120]}") from None


def split_envelope(doc: Any) -> Decoded:
    """Find the events in an envelope object, a bare list, or a single event object."""
    if isinstance(doc, list):
        return Decoded(events=doc)
    if not isinstance(doc, dict):
        raise CodecError(f"JSON must be an object or a list, got {type(doc).__name__}")
    events = doc.get(ENVELOPE_EVENTS_KEY)
    if isinstance(events, list):
        return Decoded(events=events, control={k: v for k, v in doc.items() if k != ENVELOPE_EVENTS_KEY})
    if "action" in doc:
        return Decoded(events=[doc])
    # TUNE's events key is undocumented: accept the one top-level list of objects.
    lists = [k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(e, dict) for e in v)]
    if len(lists) == 1:
        key = lists[0]
        return Decoded(events=doc[key], control={k: v for k, v in doc.items() if k != key})
    raise CodecError("envelope holds no list of events (expected an 'events' list, a list, or an event with 'action')")


def decode_body(body: str | bytes, max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> Decoded:
    """Decode a queue message body in any accepted form into its events and control fields."""
    data = body_to_json_bytes(body, max_bytes)
    return _decode_canonical(data) or split_envelope(parse_json(data))


def _decode_canonical(data: bytes) -> Decoded | None:
    """The worker's fast path, for an envelope exactly as `encode_envelope` writes it; else None.

    orjson parses, then re-serialising the parts must give back `data` byte for byte. That proves
    what `parse_json` + `split_envelope` would return: no key was named twice (a dropped pair would
    shorten the output), no integer became a float, every float is the one its text spells, and
    the `events` list is the envelope's. Anything else (other spacing, escapes, a big integer, an
    invalid document) takes the full path, which also words the errors.
    """
    if _orjson is None:
        return None
    try:
        doc = _orjson.loads(data)
    except _orjson.JSONDecodeError:
        return None
    if type(doc) is not dict:
        return None
    events = doc.get(ENVELOPE_EVENTS_KEY)
    if type(events) is not list:
        return None
    control = {k: v for k, v in doc.items() if k != ENVELOPE_EVENTS_KEY}
    try:
        dumped = [_orjson.dumps(e) for e in events]
        head = _orjson.dumps(control)[:-1] + (b',"events":[' if control else b'"events":[')
    except TypeError:
        return None
    if head + b",".join(dumped) + b"]}" != data:
        return None
    # What `dump_event_text` returns for each, without dumping it a second time.
    raw = [d.decode("utf-8") if _same_with_orjson(e) else _std_json(e) for e, d in zip(events, dumped, strict=True)]
    return Decoded(events=events, control=control, raw=raw)


def event_problem(event: Any) -> str | None:
    """Why `event` is not a storable Firehose event, or None when it is."""
    if not isinstance(event, dict):
        return f"must be a JSON object, got {type(event).__name__}"
    action = event.get("action")
    if action is None:
        return "has no 'action'"
    if not isinstance(action, str) or not action.strip():
        return "'action' must be a non-empty string"
    return None


def validate_events(events: list[Any]) -> None:
    """Raise CodecError naming the first bad event (by index) and why."""
    if not events:
        raise CodecError("no events in the body")
    for index, event in enumerate(events):
        problem = event_problem(event)
        if problem:
            raise CodecError(f"event {index} {problem}")


def encode_envelope(event_json: list[bytes], control: dict[str, Any] | None = None) -> str:
    """base64(gzip(envelope)) from events already serialised to JSON."""
    head = {"producer": PRODUCER, "sent_at": int(time.time()), **(control or {})}
    prefix = json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"events":['
    doc = prefix + b",".join(event_json) + b"]}"
    return base64.b64encode(gzip.compress(doc, compresslevel=6, mtime=0)).decode("ascii")


def _same_with_orjson(value: Any) -> bool:
    """True when orjson writes `value` byte for byte as `json.dumps(compact, ensure_ascii=False)` does.

    They differ only in how floats below 1e-4 or from 1e16 up are spelt (and NaN/Infinity, which
    orjson writes as null); anything orjson cannot write raises and falls back too.
    """
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind is float:
            if not (item == 0.0 or 1e-4 <= abs(item) < 1e16):
                return False
        elif (kind is dict or kind is list) and not _same_with_orjson(item):
            return False
    return True


def _std_json(value: Any) -> str:
    """Compact JSON as the standard library writes it: the reference every fast path must match."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _fast_dump(event: Any) -> bytes | None:
    """orjson's output when it equals the standard library's, else None."""
    if _orjson is not None and type(event) is dict and _same_with_orjson(event):
        try:
            return _orjson.dumps(event)
        except TypeError:  # JSONEncodeError: a big integer, a lone surrogate, a non-string key...
            return None
    return None


def dump_event_text(event: Any) -> str:
    """The event as compact JSON text, exactly as `json.dumps(event, separators=(",", ":"),
    ensure_ascii=False)` writes it (raising what it raises), only faster."""
    fast = _fast_dump(event)
    return fast.decode("utf-8") if fast is not None else _std_json(event)


def dump_event(event: Any) -> bytes:
    fast = _fast_dump(event)
    return fast if fast is not None else _std_json(event).encode("utf-8")


@dataclass(frozen=True)
class Packed:
    body: str
    event_count: int


def pack_events(
    events: list[Any],
    max_message_bytes: int,
    control: dict[str, Any] | None = None,
    max_event_bytes: int | None = None,
) -> list[Packed]:
    """Pack events into as few TUNE-form messages as fit `max_message_bytes` each, in order.

    With `max_event_bytes`, an event whose JSON is larger raises EventTooLarge (the worker would
    only reject it)."""
    dumped = [dump_event(e) for e in events]
    if max_event_bytes is not None:
        for index, d in enumerate(dumped):
            if len(d) > max_event_bytes:
                raise EventTooLarge(f"event {index} is {len(d)} bytes, over the {max_event_bytes} byte per-event limit")
    return _pack(dumped, 0, max_message_bytes, control)


def _pack(dumped: list[bytes], offset: int, limit: int, control: dict[str, Any] | None) -> list[Packed]:
    if not dumped:
        return []
    whole = encode_envelope(dumped, control)
    if len(whole) <= limit:
        return [Packed(whole, len(dumped))]
    if len(dumped) == 1:
        raise EventTooLarge(f"event {offset} does not fit in one queue message of {limit} bytes even compressed")
    # Split into as many near-equal (by raw size) parts as the compressed size suggests,
    # then recurse on any part that still does not fit.
    parts = max(2, math.ceil(len(whole) / limit))
    total = sum(len(d) for d in dumped)
    target = total / parts
    cuts: list[int] = []
    acc = 0
    for i, d in enumerate(dumped[:-1]):
        acc += len(d)
        if acc >= target * (len(cuts) + 1) and len(cuts) < parts - 1:
            cuts.append(i + 1)
    if not cuts:  # one huge event at the end: split in half so the recursion always shrinks
        cuts = [len(dumped) // 2]
    out: list[Packed] = []
    for start, end in zip([0, *cuts], [*cuts, len(dumped)], strict=True):
        out.extend(_pack(dumped[start:end], offset + start, limit, control))
    return out
