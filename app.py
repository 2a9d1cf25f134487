"""tune-firehose endpoint: routes only; chalicelib/ decides everything."""

import logging

from chalice.app import Chalice, Request, Response

from chalicelib.ingest import ENCODED_TYPES, serve
from chalicelib.runtime import Runtime

app = Chalice(app_name="tune-firehose")
# Lambda's root logger passes WARNING and up; the one-line record per request is INFO.
logging.getLogger("tune_firehose").setLevel(logging.INFO)
app.api.binary_types.extend(sorted(ENCODED_TYPES - {"text/plain"}))
runtime = Runtime()
# A bad setting, or a Lambda without FIREHOSE_TOKEN, fails the cold start, not the first request.
runtime.settings  # noqa: B018


def _current() -> Request:
    request = app.current_request
    assert request is not None, "Chalice sets current_request before calling a route"
    return request


@app.route("/events", methods=["POST"], content_types=["*/*"])
def post_events() -> Response:
    request = _current()
    raw = request.raw_body
    body = raw if isinstance(raw, bytes) else (raw or "").encode("utf-8")
    reply = serve(dict(request.headers), body, runtime)
    return Response(body=reply.body, status_code=reply.status, headers={"Content-Type": "application/json"})


@app.route("/health", methods=["GET"])
def health() -> dict[str, str]:
    return {"status": "ok", "queue": runtime.settings.queue_backend}
