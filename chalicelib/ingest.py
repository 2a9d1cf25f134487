"""What `POST /events` does, apart from HTTP plumbing: authorise, limit, decode, validate,
pack and enqueue. Pure functions of (headers, body, settings, queue), so the same code runs
under `chalice local`, `chalice.test.Client` and API Gateway.

Whatever arrives, the answer is one of the documented statuses with a JSON body: no exception
leaves `accept` (Chalice would answer it with a 500).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .codec import (
    GZIP_MAGIC,
    MAX_EVENT_BYTES,
    Packed,
    body_to_json_bytes,
    deep_event_error,
    inflate,
    pack_events,
    parse_json,
    split_envelope,
    validate_events,
)
from .errors import BodyTooLarge, CodecError, QueueUnavailable, Rejected, TooLarge
from .queues import Queue
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("tune_firehose.endpoint")

JSON_TYPES = {"application/json", "text/json"}
JSON_SEQ_TYPE = "application/json-seq"
NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonlines", JSON_SEQ_TYPE}
ENCODED_TYPES = {"application/gzip", "application/x-gzip", "application/octet-stream", "text/plain"}
ACCEPTED_TYPES = JSON_TYPES | NDJSON_TYPES | ENCODED_TYPES
RECORD_SEPARATOR = b"\x1e"  # RFC 7464: each JSON text of an application/json-seq body follows one


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value or ""
    return ""


def check_token(headers: Mapping[str, str], token: str | None) -> None:
    if token is None:
        return
    auth = _header(headers, "authorization")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Rejected(401, "missing bearer token: send 'Authorization: Bearer <FIREHOSE_TOKEN>'")
    # surrogatepass: a header can arrive holding a lone surrogate (a JSON-escaped Lambda event);
    # such a token is wrong, not a fault of ours to retry.
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8")):
        raise Rejected(401, "invalid bearer token")


def _content_type(headers: Mapping[str, str]) -> str:
    return _header(headers, "content-type").split(";", 1)[0].strip().lower() or "application/json"


def _parse_each(texts: list[tuple[int, bytes]], unit: str) -> list[Any]:
    events = []
    for number, text in texts:
        try:
            events.append(parse_json(text))
        except CodecError as exc:
            raise CodecError(f"{unit} {number}: {exc}") from None
    return events


def _parse_lines(data: bytes) -> list[Any]:
    """NDJSON: one JSON text per line; blank lines are skipped."""
    return _parse_each([(n, line) for n, line in enumerate(data.splitlines(), start=1) if line.strip()], "line")


def _parse_records(data: bytes) -> list[Any]:
    """RFC 7464 JSON text sequence: RS, a JSON text (which may span lines), LF; repeated.

    Empty records (RS RS) are skipped, as the RFC says; records are numbered from 1 in errors."""
    records = [chunk for chunk in data.split(RECORD_SEPARATOR)[1:] if chunk.strip()]
    return _parse_each(list(enumerate(records, start=1)), "record")


def _without_transport(body: bytes, limit: int) -> bytes:
    """The JSON bytes inside base64 and gzip; a JSON text sequence (RS first) has neither."""
    if body.lstrip()[:1] == RECORD_SEPARATOR:
        if len(body) > limit:
            raise BodyTooLarge(f"JSON text sequence exceeds the limit of {limit} bytes")
        return body
    return body_to_json_bytes(body, limit)


def _events(ctype: str, encoding: str, body: bytes, limit: int) -> list[Any]:
    # API Gateway may already have inflated a gzip body; chalice local never does.
    if encoding in ("gzip", "x-gzip") and body[:2] == GZIP_MAGIC:
        body = inflate(body, limit)
    data = _without_transport(body, limit)
    if ctype in NDJSON_TYPES:
        # RS cannot occur in a JSON text (control characters are escaped), so it marks json-seq unambiguously.
        return _parse_records(data) if data.lstrip()[:1] == RECORD_SEPARATOR else _parse_lines(data)
    return split_envelope(_parse_document(data)).events


def _parse_document(data: bytes) -> Any:
    try:
        return parse_json(data)
    except CodecError as exc:  # too deep for the stack? Then name the event, as for one less deep
        raise deep_event_error(data) or exc from None


def parse_request(headers: Mapping[str, str], body: bytes, settings: Settings) -> list[Any]:
    """The events in a request, or Rejected with the status and reason."""
    if len(body) > settings.max_body_bytes:
        raise Rejected(413, f"body is {len(body)} bytes, over the {settings.max_body_bytes} byte limit")
    ctype = _content_type(headers)
    if ctype not in ACCEPTED_TYPES:
        raise Rejected(415, f"unsupported content type {ctype!r}; send one of {', '.join(sorted(ACCEPTED_TYPES))}")
    encoding = _header(headers, "content-encoding").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise Rejected(415, f"unsupported content encoding {encoding!r}; send gzip or none")
    if not body.strip():
        raise Rejected(400, "body is empty (chunked uploads are not supported: send Content-Length)")
    try:
        events = _events(ctype, encoding, body, settings.max_decoded_bytes)
        validate_events(events)
    except CodecError as exc:
        raise Rejected(413 if isinstance(exc, TooLarge) else 400, str(exc)) from None
    return events


def pack_request(events: list[Any], settings: Settings, queue: Queue) -> list[Packed]:
    """The queue messages for `events`, each small enough for the queue and for the worker to inflate."""
    try:
        return pack_events(
            events,
            queue.max_message_bytes(),
            max_event_bytes=MAX_EVENT_BYTES,
            max_decoded_bytes=settings.max_decoded_bytes,
        )
    except CodecError as exc:
        raise Rejected(413 if isinstance(exc, TooLarge) else 400, str(exc)) from None


def _send(packed: list[Packed], events: int, queue: Queue) -> Reply:
    messages = len(packed)
    try:
        result = queue.send_all([p.body for p in packed])
    except QueueUnavailable as exc:
        log.warning("queue unavailable: %s", exc)
        return Reply(503, {"error": "queue unavailable, nothing was queued; retry", "queued_events": 0})
    if result.ok:
        return Reply(202, {"accepted": events, "messages": messages})
    failed = {i for i, _ in result.failed}
    queued = sum(p.event_count for i, p in enumerate(packed) if i not in failed)
    log.warning("queue refused %d of %d messages: %s", len(failed), messages, result.failed[0][1])
    return Reply(
        503,
        {
            "error": f"queue accepted {messages - len(failed)} of {messages} messages; retry the request",
            "queued_events": queued,
        },
    )


def _log_unexpected(stage: str, exc: BaseException, body: bytes, headers: Mapping[str, str]) -> None:
    """One ERROR line: what was raised and where, the body's size and type; never the body itself."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    log.error(
        json.dumps(
            {
                "route": "POST /events",
                "unexpected": type(exc).__name__,
                "while": stage,
                "detail": str(exc)[:200],
                "where": [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames],
                "bytes": len(body),
                "content_type": _content_type(headers)[:80],
            }
        )
    )


def _internal_error(stage: str, exc: Exception, body: bytes, headers: Mapping[str, str], queued: int | None) -> Reply:
    # A fault of ours, not of the request: 503, so the sender retries (maybe after a fix), never 500.
    _log_unexpected(stage, exc, body, headers)
    if queued is None:  # a send broke off: what reached the queue is unknown, and the keys absorb a resend
        return Reply(503, {"error": f"internal error ({type(exc).__name__}) while {stage}; retry the request"})
    error = f"internal error ({type(exc).__name__}) while {stage}; nothing was queued; retry later"
    return Reply(503, {"error": error, "queued_events": queued})


def accept(headers: Mapping[str, str], body: bytes, settings: Settings, queue: Queue) -> Reply:
    started = time.perf_counter()
    events: list[Any] = []
    packed: list[Packed] = []
    try:
        check_token(headers, settings.firehose_token)
        events = parse_request(headers, body, settings)
        packed = pack_request(events, settings, queue)
    except Rejected as exc:
        reply = Reply(exc.status, {"error": exc.message})
    except Exception as exc:  # a bug this input found: logged, answered, and nothing was queued
        reply = _internal_error("reading the request", exc, body, headers, queued=0)
    else:
        try:
            reply = _send(packed, len(events), queue)
        except Exception as exc:  # not QueueUnavailable: some messages may be in the queue
            reply = _internal_error("sending to the queue", exc, body, headers, queued=None)
    log.info(
        json.dumps(
            {
                "route": "POST /events",
                "status": reply.status,
                "events": len(events),
                "messages": len(packed),
                "bytes": len(body),
                "ms": round((time.perf_counter() - started) * 1000, 2),
            }
        )
    )
    return reply


def serve(headers: Mapping[str, str], body: bytes, runtime: Runtime) -> Reply:
    """`accept` with the container's settings and queue; a queue that cannot be opened is a 503."""
    try:
        queue = runtime.queue
    except Exception as exc:  # a missing disk, a bad local queue file, a botocore fault: retry later
        log.warning("queue cannot be opened: %s: %s", type(exc).__name__, str(exc)[:200])
        return Reply(503, {"error": "queue unavailable, nothing was queued; retry", "queued_events": 0})
    return accept(headers, body, runtime.settings, queue)
