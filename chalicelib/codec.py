"""The one wire format: TUNE's envelope, gzipped then base64-encoded.

Decoding accepts what TUNE sends (base64(gzip(JSON))) and the forms a producer or a test is
likely to hand us (gzip(JSON), plain JSON). Encoding always writes TUNE's form, so the worker
only ever needs this module to read the queue.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import gzip
import json
import math
import re
import secrets
import time
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

# Re-exported: the worker and the tests catch these from here; chalicelib.errors is their home.
from .errors import BodyTooLarge as BodyTooLarge
from .errors import CodecError as CodecError
from .errors import EventTooLarge as EventTooLarge

try:  # orjson writes these events ~4x faster; dump_event* fall back to json where they would differ
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a listed dependency, but optional
    _orjson = None  # type: ignore[assignment]  # the module is optional: None means fall back to json

GZIP_MAGIC = b"\x1f\x8b"
# wbits=47 (32 + 15): zlib auto-detects a gzip or zlib header.
_AUTO_HEADER_WBITS = 47
# The limits of the wire format, defined here only (settings, the endpoint and the worker import them).
DEFAULT_MAX_DECODED_BYTES = 32 * 1024 * 1024  # a message or body, inflated: MAX_DECODED_BYTES' default
MAX_EVENT_BYTES = 1024 * 1024  # one event's JSON as this module writes it; the worker rejects larger ones too
# How deep the endpoint lets an event nest. Far below every parser's and serialiser's own limit (orjson
# writes 254 levels; json's depends on the stack), so what the endpoint accepts the worker can always read.
MAX_EVENT_DEPTH = 100
ENVELOPE_EVENTS_KEY = "events"
PRODUCER = "tune-firehose"


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
        raise BodyTooLarge(f"decompressed body exceeds the limit of {max_bytes} bytes")
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
    payload, compressed = _strip_transport(body, max_bytes)
    return inflate(payload, max_bytes) if compressed else payload


def _strip_transport(body: str | bytes, max_bytes: int) -> tuple[bytes, bool]:
    """The JSON document's bytes, or (with True) the gzip or zlib data that inflates to them."""
    # surrogatepass: a str body holding a lone surrogate becomes bytes that fail as "not valid UTF-8"
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    stripped = raw.strip()
    if not stripped:
        raise CodecError("body is empty")
    if stripped[:2] == GZIP_MAGIC:
        return stripped, True
    if stripped[:1] in (b"{", b"["):
        if len(stripped) > max_bytes:
            raise BodyTooLarge(f"JSON body exceeds the limit of {max_bytes} bytes")
        return stripped, False
    try:
        text = stripped.decode("ascii")
    except UnicodeDecodeError:
        raise CodecError("body is neither JSON, gzip nor base64 (it holds non-ASCII bytes)") from None
    if text[0] in '"-0123456789' or text in ("true", "false", "null"):
        try:
            json.loads(text)
            return stripped, False  # a JSON scalar: split_envelope names its type
        except ValueError:
            pass
    inner = _unbase64(text)
    if inner[:2] == GZIP_MAGIC or inner[:1] == b"\x78":  # gzip, or zlib's header byte
        return inner, True
    if inner.lstrip()[:1] in (b"{", b"["):
        if len(inner) > max_bytes:
            raise BodyTooLarge(f"JSON body exceeds the limit of {max_bytes} bytes")
        return inner, False
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


class FloatText(float):
    """A JSON number that a float cannot hold exactly, with the decimal text it was written as.

    It is a float everywhere (json.dumps writes it as float.__repr__, as before); only money
    (`worker.coerce.to_micros`) reads `text`. Never in a row: marshal refuses float subclasses.
    """

    __slots__ = ("text",)
    text: str


def _parse_float(text: str) -> float:
    number = float(text)
    # A literal of at most 16 characters has at most 15 significant digits, which a double
    # always gives back (DBL_DIG); a longer one usually is its own shortest repr too.
    if len(text) <= 16 or float.__repr__(number) == text:
        return number
    exact = FloatText(number)
    exact.text = text
    return exact


def _utf8_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(f"body is not valid UTF-8 (byte {exc.start})") from None


def parse_json(data: bytes) -> Any:
    """The document, each float literal a float (a `FloatText` when the float loses digits)."""
    return _parse_text(_utf8_text(data))


def _parse_text(text: str, object_pairs_hook: Any = _unique_keys) -> Any:
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook, parse_float=_parse_float)
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
    """Decode a queue message body in any accepted form into its events and control fields.

    Whatever the body holds, the only exception is CodecError (the worker turns it into a reject).
    """
    data = body_to_json_bytes(body, max_bytes)
    return _decode_canonical(data) or split_envelope(parse_json(data))


def read_body(body: str | bytes, max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> Decoded | EventStream:
    """`decode_body`, except that a document larger than STREAM_MIN_BYTES comes back as an
    `EventStream`: inflated piece by piece and its events parsed one at a time, so neither the whole
    document nor its parsed objects are ever held. Raises CodecError as `decode_body` does."""
    payload, compressed = _strip_transport(body, max_bytes)
    if compressed:
        inflater = zlib.decompressobj(_AUTO_HEADER_WBITS)
        try:
            head = inflater.decompress(payload, STREAM_MIN_BYTES + 1)
        except zlib.error:
            head = inflate(payload, max_bytes)  # raises, with its wording
        if len(head) > STREAM_MIN_BYTES and max_bytes > STREAM_MIN_BYTES:
            return EventStream(
                _inflated_text(inflater, head, payload, max_bytes), lambda: body_to_json_bytes(body, max_bytes)
            )
        if len(head) > max_bytes or not inflater.eof:
            inflate(payload, max_bytes)  # too large or truncated: raises, with its wording
        data = head
    else:
        data = payload
    if len(data) <= STREAM_MIN_BYTES:
        return _decode_canonical(data) or split_envelope(parse_json(data))
    return EventStream(iter([_utf8_text(data)]), lambda: body_to_json_bytes(body, max_bytes))


# Inflated bytes per piece of an EventStream's text.
_PIECE_BYTES = 1024 * 1024


def _inflated_text(inflater: Any, head: bytes, payload: bytes, max_bytes: int) -> Iterator[str]:
    """The document's text, piece by piece: what `inflate` gives whole. Raises CodecError where it
    would raise (too large, truncated, corrupt) or the text is not UTF-8 (EventStream stops there)."""
    utf8 = codecs.getincrementaldecoder("utf-8")()
    total, out, pending = len(head), head, inflater.unconsumed_tail
    del head, payload
    try:
        while True:
            yield utf8.decode(out)
            if inflater.eof:
                break
            out = inflater.decompress(pending, _PIECE_BYTES)
            pending = inflater.unconsumed_tail
            total += len(out)
            if total > max_bytes or not (out or pending or inflater.eof):
                raise CodecError("too large or truncated")
        yield utf8.decode(b"", final=True)
    except (zlib.error, UnicodeDecodeError):
        raise CodecError("corrupt, or not UTF-8") from None


# JSON's whitespace, as the json module skips it.
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip_whitespace(text: str, at: int) -> int:
    """Where the JSON whitespace from `at` ends."""
    match = _WHITESPACE.match(text, at)
    return match.end() if match else at


# The parser `parse_json` uses, one value at a time (raw_decode parses one value from an offset).
_VALUE_PARSER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=_parse_float)
_NUMBER_TYPES = (int, float, FloatText)  # what the parser makes of a JSON number


# Raised inside `EventStream` only, never out of it: the document is not one read event by event.
def _unusual() -> CodecError:
    return CodecError("not an envelope read event by event")


def _drop_checked(pairs: list[tuple[str, Any]]) -> None:
    """object_pairs_hook for validating only: the same checks as `_unique_keys`, nothing kept."""
    _unique_keys(pairs)


class EventStream:
    """A large envelope, read one event at a time from its text as it is inflated: each event is
    parsed when it is asked for, with the very parser `parse_json` uses, so it is the object the
    whole-document path would give. Only a window of the text is held (what is not yet parsed).

    Iterating yields the events; afterwards `control` holds the envelope's other fields and `count`
    the number of events, unless `unusual` is set: then the document is invalid, or of a shape read
    only whole (a key named twice, a single event, no `events` list, a scalar), iteration stopped
    early, and what was taken from it must be dropped in favour of `whole()`, which reads the body
    again and gives (or raises) exactly what `decode_body` does."""

    def __init__(self, pieces: Iterator[str], reread: Callable[[], bytes]) -> None:
        self._pieces, self._reread = pieces, reread
        self._text, self._at, self._finished = "", 0, False
        self.control: dict[str, Any] = {}
        self.count = 0
        self.unusual = False

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._walk()
        except (ValueError, CodecError, RecursionError):  # JSONDecodeError is a ValueError
            self.unusual = True
        self._text, self._pieces = "", iter(())

    def whole(self) -> Decoded:
        """What `decode_body` gives for the document (raising its CodecError). Validated first
        without keeping what it parses, so a document that fails costs no more than one that passes."""
        text = _utf8_text(self._reread())
        _parse_text(text, _drop_checked)
        return split_envelope(_parse_text(text))

    # -- the window of text ------------------------------------------------------------------

    def _more(self) -> bool:
        """Drop the text parsed so far and add at least as much as is left (so a value larger than
        a piece is parsed again only a few times); False at the end of the document."""
        if self._finished:
            return False
        parts, added = [self._text[self._at :]], 0
        while added < max(len(parts[0]), 1):
            piece = next(self._pieces, None)
            if piece is None:
                self._finished = True
                break
            parts.append(piece)
            added += len(piece)
        self._text, self._at = "".join(parts), 0
        return added > 0 or not self._finished

    def _peek(self) -> str:
        """The next character that is not whitespace ("" at the end)."""
        while True:
            self._at = _skip_whitespace(self._text, self._at)
            if self._at < len(self._text) or not self._more():
                return self._text[self._at : self._at + 1]

    def _value(self) -> Any:
        """The JSON value at the current place (after `_peek`)."""
        while True:
            try:
                value, end = _VALUE_PARSER.raw_decode(self._text, self._at)
            except ValueError:  # perhaps cut short by the window's end
                if self._more():
                    continue
                raise
            if self._may_go_on(value, end) and self._more():
                continue
            self._at = end
            return value

    def _may_go_on(self, value: Any, end: int) -> bool:
        """Whether the value just read may be only the start of one cut by the window's end: the
        window ends there, or a number is followed by no more than the start of a fraction or an
        exponent (`1.`, `1e`, `1.5e+`), which the next piece may complete."""
        rest = len(self._text) - end
        if rest == 0:
            return True
        return rest <= 2 and self._text[end] in ".eE" and type(value) in _NUMBER_TYPES

    # -- the envelope ------------------------------------------------------------------------

    def _walk(self) -> Generator[Any, None, None]:
        first = self._peek()
        self._at += 1
        if first == "[":
            yield from self._elements()
        elif first == "{":
            yield from self._fields()
        else:
            raise _unusual()
        if self._peek() != "":
            raise _unusual()

    def _fields(self) -> Generator[Any, None, None]:
        """The envelope object's fields, after its brace."""
        found = False
        while True:
            if self._peek() != '"':
                raise _unusual()  # an empty object, or not JSON
            key = self._value()
            if self._peek() != ":" or key in self.control or (key == ENVELOPE_EVENTS_KEY and found):
                raise _unusual()
            self._at += 1
            if key == ENVELOPE_EVENTS_KEY:
                if self._peek() != "[":
                    raise _unusual()
                self._at += 1
                found = True
                yield from self._elements()
            else:
                self._peek()
                self.control[key] = self._value()
            after = self._peek()
            self._at += 1
            if after == "}" and found:
                return
            if after != ",":
                raise _unusual()

    def _elements(self) -> Generator[Any, None, None]:
        """The events of a list, after its bracket."""
        if self._peek() == "]":
            self._at += 1
            return
        while True:
            self._peek()
            event = self._value()
            self.count += 1
            yield event
            del event
            after = self._peek()
            self._at += 1
            if after == "]":
                return
            if after != ",":
                raise _unusual()


# Above this size (inflated) the worker reads a message's events one at a time (`read_body`).
STREAM_MIN_BYTES = 1024 * 1024


# While orjson parses a document and writes its events back, it holds about 15 times the document
# (its parser's pool, and a buffer per written event); the full path holds about 3 times. Above this
# the worker takes the full path, so a 32 MiB message cannot take it past its memory bound
# (bench/memory.py). TUNE's messages, about 100 events, are far below it.
FAST_PATH_MAX_BYTES = 1024 * 1024


def _decode_canonical(data: bytes) -> Decoded | None:
    """The worker's fast path, for an envelope exactly as `encode_envelope` writes it; else None.

    orjson parses, then re-serialising the parts must give back `data` byte for byte. That proves
    what `parse_json` + `split_envelope` would return: no key was named twice (a dropped pair would
    shorten the output), no integer became a float, every float is the one its text spells, and
    the `events` list is the envelope's. Anything else (other spacing, escapes, a big integer, an
    invalid document, a value it cannot re-serialise) takes the full path, which also words the
    errors; so this function returns None rather than raise.
    """
    if _orjson is None or len(data) > FAST_PATH_MAX_BYTES:
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
        if head + b",".join(dumped) + b"]}" != data:
            return None
        # What `dump_event_text` returns for each, without dumping it a second time.
        raw = [d.decode("utf-8") if _same_with_orjson(e) else _std_json(e) for e, d in zip(events, dumped, strict=True)]
    except (TypeError, ValueError, RecursionError):  # orjson cannot write it, or json runs out of stack
        return None
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
    """Raise CodecError naming the first bad event (by index) and why (`pack_events` checks depth)."""
    if not events:
        raise CodecError("no events in the body")
    for index, event in enumerate(events):
        problem = event_problem(event)
        if problem:
            raise CodecError(f"event {index} {problem}")


def _too_deep(index: int, max_depth: int) -> CodecError:
    return CodecError(f"event {index} nests objects or lists more than {max_depth} levels deep")


def deep_event_error(data: bytes, max_depth: int = MAX_EVENT_DEPTH) -> CodecError | None:
    """For a document `parse_json` could not read: the error naming the event nested too deeply, if
    that is what is wrong and orjson (which reads 1,024 levels without using the stack) can tell."""
    if _orjson is None:
        return None
    try:
        events = split_envelope(_orjson.loads(data)).events
    except (_orjson.JSONDecodeError, CodecError):
        return None
    for index, event in enumerate(events):
        if _scan(event, max_depth).too_deep:
            return _too_deep(index, max_depth)
    return None


def _envelope_json(event_json: list[bytes], control: dict[str, Any] | None) -> bytes:
    """The envelope's JSON, as the worker will inflate it."""
    head = {"producer": PRODUCER, "sent_at": int(time.time()), **(control or {})}
    prefix = json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"events":['
    return prefix + b",".join(event_json) + b"]}"


def _tune_form(doc: bytes) -> str:
    return base64.b64encode(gzip.compress(doc, compresslevel=6, mtime=0)).decode("ascii")


def encode_envelope(event_json: list[bytes], control: dict[str, Any] | None = None) -> str:
    """base64(gzip(envelope)) from events already serialised to JSON."""
    return _tune_form(_envelope_json(event_json, control))


def _same_with_orjson(value: Any) -> bool:
    """True when orjson writes `value` byte for byte as `json.dumps(compact, ensure_ascii=False)` does.

    They differ only in how floats below 1e-4 or from 1e16 up are spelt (and NaN/Infinity, which
    orjson writes as null); anything orjson cannot write raises and falls back too. `value` is any
    JSON value, a bare number included; the walk keeps its own stack, so no depth can overflow it.
    """
    pending: list[Any] = [(value,)]
    while pending:
        container = pending.pop()
        for item in container.values() if type(container) is dict else container:
            kind = type(item)
            if kind is float:
                if not (item == 0.0 or 1e-4 <= abs(item) < 1e16):
                    return False
            elif kind is dict or kind is list:
                pending.append(item)
    return True


@dataclass(frozen=True)
class _Scanned:
    same_with_orjson: bool  # as `_same_with_orjson(value)`
    too_deep: bool  # nests objects and lists more than the depth asked about (the walk stopped there)
    float_text: bool  # holds a FloatText, whose decimal text the queue message must keep


def _scan(value: Any, max_depth: int) -> _Scanned:
    """What packing must know of a value, in one walk (a second would cost ~1 us an event). An
    object or list is one level; the walk keeps its own stack, so a hostile depth costs time only."""
    same, float_text = True, False
    pending: list[tuple[Any, int]] = [((value,), 0)]
    while pending:
        container, depth = pending.pop()
        for item in container.values() if type(container) is dict else container:
            kind = type(item)
            if kind is float:
                if same and not (item == 0.0 or 1e-4 <= abs(item) < 1e16):
                    same = False
            elif kind is dict or kind is list:
                if depth >= max_depth:
                    return _Scanned(same, True, float_text)
                pending.append((item, depth + 1))
            elif kind is FloatText:
                float_text = True
    return _Scanned(same, False, float_text)


def _json_keeping_float_text(value: Any) -> str:
    """`_std_json(value)`, but each FloatText written as the literal it was read from, so money keeps
    every digit on its way through the queue. json's C encoder writes any float subclass with
    float.__repr__, so each is swapped for a marker string, and the marker for the literal after.
    Recursive: only called on values `_scan` found at most MAX_EVENT_DEPTH deep."""
    marker = f"float-text-{secrets.token_hex(8)}-"
    texts: list[str] = []

    def swap(item: Any) -> Any:
        kind = type(item)
        if kind is FloatText:
            texts.append(item.text)
            return f"{marker}{len(texts) - 1}"
        if kind is dict:
            return {key: swap(v) for key, v in item.items()}
        if kind is list:
            return [swap(v) for v in item]
        return item

    written = _std_json(swap(value))
    return re.sub(f'"{marker}([0-9]+)"', lambda m: texts[int(m.group(1))], written)


def _std_json(value: Any) -> str:
    """Compact JSON as the standard library writes it: the reference every fast path must match."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _fast_dump(event: Any, same: bool | None = None) -> bytes | None:
    """orjson's output when it equals the standard library's, else None (`same`: known already)."""
    if _orjson is not None and type(event) is dict and (_same_with_orjson(event) if same is None else same):
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


def dump_event(event: Any, same: bool | None = None) -> bytes:
    """`dump_event_text` as UTF-8 bytes. `same`: what `_same_with_orjson(event)` is, when known."""
    fast = _fast_dump(event, same)
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
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    max_depth: int = MAX_EVENT_DEPTH,
) -> list[Packed]:
    """Pack events into as few TUNE-form messages as fit, in order: each at most `max_message_bytes`
    as sent and `max_decoded_bytes` once inflated (the worker's MAX_DECODED_BYTES), so the worker
    can read every message the endpoint answered 202 for.

    Sizes count each event as this module writes it, which may be longer than it was sent (`1e15`
    is written `1000000000000000.0`). With `max_event_bytes`, an event whose JSON is larger raises
    EventTooLarge (the worker would only reject it). An event that cannot be written as UTF-8 JSON
    (a lone surrogate), or that nests more than `max_depth` deep, raises CodecError naming it."""
    dumped = [_dump_for_queue(index, event, max_depth) for index, event in enumerate(events)]
    if max_event_bytes is not None:
        for index, d in enumerate(dumped):
            if len(d) > max_event_bytes:
                raise EventTooLarge(f"event {index} is {len(d)} bytes, over the {max_event_bytes} byte per-event limit")
    return _pack(dumped, 0, max_message_bytes, max_decoded_bytes, control)


def _dump_for_queue(index: int, event: Any, max_depth: int) -> bytes:
    """`dump_event(event)`, refusing first what nests too deep for every reader on the way."""
    scanned = _scan(event, max_depth)
    if scanned.too_deep:
        raise _too_deep(index, max_depth)
    try:
        if scanned.float_text:
            return _json_keeping_float_text(event).encode("utf-8")
        return dump_event(event, scanned.same_with_orjson)
    except UnicodeEncodeError:
        raise CodecError(
            f"event {index} holds a lone UTF-16 surrogate {_surrogate_at(event)}, which is not valid Unicode text"
        ) from None
    except RecursionError:
        raise CodecError(f"event {index} is nested too deeply to serialise") from None
    except (TypeError, ValueError) as exc:  # not from parsed JSON; say what, never crash
        raise CodecError(f"event {index} cannot be serialised as JSON ({type(exc).__name__})") from None


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and any("\ud800" <= ch <= "\udfff" for ch in text)


def _surrogate_at(event: Any) -> str:
    """Where the first lone surrogate is, as a JSON pointer ("at /x/3", "in a key at /x")."""
    pending: list[tuple[Any, str]] = [(event, "")]
    while pending:
        value, path = pending.pop()
        if type(value) is str:
            if _has_surrogate(value):
                return f"at {path or '/'}"
            continue
        items = value.items() if type(value) is dict else enumerate(value) if type(value) is list else ()
        for key, item in items:
            if type(key) is str and _has_surrogate(key):
                return f"in a key at {path or '/'}"
            name = ascii(str(key)[:40])[1:-1].replace("~", "~0").replace("/", "~1")  # printable, as in RFC 6901
            pending.append((item, f"{path}/{name}"))
    return "somewhere in it"


def _pack(
    dumped: list[bytes], offset: int, limit: int, decoded_limit: int, control: dict[str, Any] | None
) -> list[Packed]:
    if not dumped:
        return []
    doc = _envelope_json(dumped, control)
    if len(doc) <= decoded_limit:
        whole = _tune_form(doc)
        if len(whole) <= limit:
            return [Packed(whole, len(dumped))]
        parts = math.ceil(len(whole) / limit)
        if len(dumped) == 1:
            raise EventTooLarge(f"event {offset} does not fit in one queue message of {limit} bytes even compressed")
    else:  # no need to compress what the worker would refuse to inflate
        parts = math.ceil(len(doc) / decoded_limit)
        if len(dumped) == 1:
            raise EventTooLarge(
                f"event {offset} is {len(dumped[0])} bytes as JSON: a message holding it would inflate past "
                f"the {decoded_limit} byte limit (MAX_DECODED_BYTES)"
            )
    # Split into as many near-equal (by raw size) parts as the size suggests,
    # then recurse on any part that still does not fit.
    parts = max(2, parts)
    target = sum(len(d) for d in dumped) / parts
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
        out.extend(_pack(dumped[start:end], offset + start, limit, decoded_limit, control))
    return out
