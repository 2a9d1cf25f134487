"""tune-firehose endpoint: routes only; chalicelib/ decides everything."""

from chalice import Chalice, Response

from chalicelib.ingest import ENCODED_TYPES, accept
from chalicelib.runtime import Runtime

app = Chalice(app_name="tune-firehose")
app.api.binary_types.extend(sorted(ENCODED_TYPES - {"text/plain"}))
runtime = Runtime()
runtime.settings  # noqa: B018 - a bad setting fails the cold start, not the first request


@app.route("/events", methods=["POST"], content_types=["*/*"])
def post_events() -> Response:
    request = app.current_request
    raw = request.raw_body
    body = raw if isinstance(raw, bytes) else (raw or "").encode("utf-8")
    reply = accept(dict(request.headers), body, runtime.settings, runtime.queue)
    return Response(body=reply.body, status_code=reply.status, headers={"Content-Type": "application/json"})


@app.route("/health", methods=["GET"])
def health() -> dict[str, str]:
    return {"status": "ok", "queue": runtime.settings.queue_backend}
