"""What `POST /events` does, apart from HTTP plumbing: authorise, limit, decode, validate,
pack and enqueue. Pure functions of (headers, body, settings, queue), so the same code runs
under `chalice local`, `chalice.test.Client` and API Gateway.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .codec import (
    GZIP_MAGIC,
    MAX_EVENT_BYTES,
    CodecError,
    EventTooLarge,
    body_to_json_bytes,
    inflate,
    pack_events,
    parse_json,
    split_envelope,
    validate_events,
)
from .queues import Queue, QueueUnavailable
from .settings import Settings

log = logging.getLogger("tune_firehose.endpoint")

JSON_TYPES = {"application/json", "text/json"}
NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonlines", "application/json-seq"}
ENCODED_TYPES = {"application/gzip", "application/x-gzip", "application/octet-stream", "text/plain"}
ACCEPTED_TYPES = JSON_TYPES | NDJSON_TYPES | ENCODED_TYPES


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


class Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
    if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise Rejected(401, "invalid bearer token")


def _content_type(headers: Mapping[str, str]) -> str:
    return _header(headers, "content-type").split(";", 1)[0].strip().lower() or "application/json"


def _parse_ndjson(data: bytes) -> list[Any]:
    events = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(parse_json(line))
        except CodecError as exc:
            raise CodecError(f"line {number}: {exc}") from None
    return events


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
    limit = settings.max_decoded_bytes
    try:
        # API Gateway may already have inflated a gzip body; chalice local never does.
        if encoding in ("gzip", "x-gzip") and body[:2] == GZIP_MAGIC:
            body = inflate(body, limit)
        if ctype in NDJSON_TYPES:
            events = _parse_ndjson(body_to_json_bytes(body, limit))
        else:
            events = split_envelope(parse_json(body_to_json_bytes(body, limit))).events
        validate_events(events)
    except CodecError as exc:
        status = 413 if "exceeds the limit" in str(exc) else 400
        raise Rejected(status, str(exc)) from None
    return events


def accept(headers: Mapping[str, str], body: bytes, settings: Settings, queue: Queue) -> Reply:
    started = time.perf_counter()
    events: list[Any] = []
    messages = 0
    try:
        check_token(headers, settings.firehose_token)
        events = parse_request(headers, body, settings)
        try:
            packed = pack_events(events, queue.max_message_bytes(), max_event_bytes=MAX_EVENT_BYTES)
        except EventTooLarge as exc:
            raise Rejected(413, str(exc)) from None
        messages = len(packed)
        try:
            result = queue.send_all([p.body for p in packed])
        except QueueUnavailable as exc:
            log.warning("queue unavailable: %s", exc)
            reply = Reply(503, {"error": "queue unavailable, nothing was queued; retry", "queued_events": 0})
        else:
            if result.ok:
                reply = Reply(202, {"accepted": len(events), "messages": messages})
            else:
                failed = {i for i, _ in result.failed}
                queued = sum(p.event_count for i, p in enumerate(packed) if i not in failed)
                log.warning("queue refused %d of %d messages: %s", len(failed), messages, result.failed[0][1])
                reply = Reply(
                    503,
                    {
                        "error": f"queue accepted {messages - len(failed)} of {messages} messages; retry the request",
                        "queued_events": queued,
                    },
                )
    except Rejected as exc:
        reply = Reply(exc.status, {"error": exc.message})
    log.info(
        json.dumps(
            {
                "route": "POST /events",
                "status": reply.status,
                "events": len(events),
                "messages": messages,
                "bytes": len(body),
                "ms": round((time.perf_counter() - started) * 1000, 2),
            }
        )
    )
    return reply
