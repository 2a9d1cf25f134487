"""Issue 5, item 4: the endpoint lets no one in, leaks nothing, and never answers 500.

- With FIREHOSE_TOKEN set, a missing or wrong token is 401 and enqueues nothing.
- The token is compared with hmac.compare_digest (checked by a spy and by reading the code).
- Bodies over the size limit are 413.
- No response and no log line (in process, and from a real `chalice local`) carries a stack
  trace, the token or the AWS secret.
- Hypothesis fuzzes bodies, content types, encodings and tokens: never 500, and a request that
  is not accepted enqueues nothing.
"""

from __future__ import annotations

import ast
import base64
import gzip
import inspect
import json
import logging
import os
import signal
import string
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app as app_module
from chalicelib import ingest, runtime
from chalicelib.codec import decode_body
from chalicelib.queues.local import LocalQueue
from chalicelib.queues.sqs import SqsQueue
from chalicelib.settings import Settings, load_settings
from tests.faultkit import PLANTED_AWS_SECRET, PLANTED_TOKEN, ChaliceLocal, WorkerProcess, child_env, wait_for

ROOT = Path(__file__).resolve().parent.parent
TOKEN = PLANTED_TOKEN
EVENTS = [{"action": "click", "tune_event_id": "s1"}, {"action": "conversion", "tune_event_id": "s2", "payout": 1.5}]
LEAKS = (TOKEN, PLANTED_AWS_SECRET, "Traceback", 'File "')


def no_leak(text: str, where: str) -> None:
    for secret in LEAKS:
        assert secret not in text, f"{where} carries {secret[:12]!r}: {text[:500]}"


def queued(queue: LocalQueue) -> int:
    depth = queue.depth()
    return depth.visible + depth.in_flight


@pytest.fixture()
def guarded(tmp_path: Path) -> Iterator[tuple[Client, LocalQueue]]:
    """The app with FIREHOSE_TOKEN and AWS credentials set, on a local queue."""
    queue = LocalQueue(tmp_path / "queue.db")
    env = {
        "QUEUE_URL": f"local:{queue.path}",
        "FIREHOSE_TOKEN": TOKEN,
        "AWS_KEY": "AKIAPLANTED",
        "AWS_SECRET": PLANTED_AWS_SECRET,
    }
    app_module.runtime.reset(settings=load_settings(env, dotenv_path=None), queue=queue)
    with Client(app_module.app) as client:
        yield client, queue
    app_module.runtime.reset()
    queue.close()


def post(client: Client, body: bytes | str, **headers: str) -> Any:
    return client.http.post("/events", body=body, headers={"Content-Type": "application/json", **headers})


# -- the token ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN.upper()}",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        TOKEN,
        f"Bearer {base64.b64encode(TOKEN.encode()).decode()}",
        f"Bearer {TOKEN}\udcff",  # a lone surrogate, as a JSON-escaped Lambda event can carry
    ],
)
def test_missing_or_wrong_token_is_401_and_enqueues_nothing(
    guarded: tuple[Client, LocalQueue], auth: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    client, queue = guarded
    caplog.set_level(logging.DEBUG)
    headers = {} if auth is None else {"Authorization": auth}
    resp = post(client, json.dumps(EVENTS), **headers)
    assert resp.status_code == 401
    assert set(resp.json_body) == {"error"} and "token" in resp.json_body["error"]
    assert queued(queue) == 0
    no_leak(resp.body.decode(), "the 401 response")
    no_leak(caplog.text, "the log")


@pytest.mark.parametrize("auth", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "])
def test_right_token_is_accepted(guarded: tuple[Client, LocalQueue], auth: str) -> None:
    client, queue = guarded
    resp = post(client, json.dumps(EVENTS), Authorization=auth)
    assert resp.status_code == 202 and queued(queue) == 1


def test_token_is_checked_before_the_body_is_read(guarded: tuple[Client, LocalQueue]) -> None:
    """An unauthenticated caller learns nothing about body parsing (no 400/413 oracle)."""
    client, queue = guarded
    assert post(client, b"{not json").status_code == 401
    assert post(client, b"x" * (7 * 1024 * 1024)).status_code == 401
    assert queued(queue) == 0


def test_token_compare_is_constant_time(guarded: tuple[Client, LocalQueue], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token check goes through hmac.compare_digest, and its answer is the one obeyed."""
    calls: list[tuple[Any, Any]] = []
    real = ingest.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(ingest.hmac, "compare_digest", spy)
    client, _ = guarded
    assert post(client, json.dumps(EVENTS), Authorization="Bearer nope").status_code == 401
    assert post(client, json.dumps(EVENTS), Authorization=f"Bearer {TOKEN}").status_code == 202
    assert len(calls) == 2, "the token was not compared with hmac.compare_digest"
    assert {bytes(b) for _, b in calls} == {TOKEN.encode()}

    # And its verdict decides: a compare_digest that says "no" locks out even the right token.
    monkeypatch.setattr(ingest.hmac, "compare_digest", lambda a, b: False)
    assert post(client, json.dumps(EVENTS), Authorization=f"Bearer {TOKEN}").status_code == 401


def test_token_is_never_compared_with_equality() -> None:
    """Read the code: check_token has no ==, !=, `in` or startswith on the token."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(ingest.check_token)))
    compares = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    suspicious = [c for c in compares if ("token" in c and "None" not in c) or "given" in c]
    assert not suspicious, f"token compared without compare_digest: {suspicious}"
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert "hmac.compare_digest" in calls
    assert not [c for c in calls if c.endswith(("startswith", "endswith", "find", "index"))]


# -- the size limit ---------------------------------------------------------------------------------


def test_body_over_the_default_limit_is_413(guarded: tuple[Client, LocalQueue]) -> None:
    client, queue = guarded
    limit = app_module.runtime.settings.max_body_bytes
    assert limit <= 6 * 1024 * 1024, "the default body limit is above Lambda's 6 MB payload limit"
    body = json.dumps([{"action": "click", "pad": "x" * (limit + 10)}])
    resp = post(client, body, Authorization=f"Bearer {TOKEN}")
    assert resp.status_code == 413 and "byte limit" in resp.json_body["error"]
    assert queued(queue) == 0


def test_body_limit_is_a_setting(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    env = {"QUEUE_URL": f"local:{queue.path}", "MAX_BODY_BYTES": "2048"}
    app_module.runtime.reset(settings=load_settings(env, dotenv_path=None), queue=queue)
    try:
        with Client(app_module.app) as client:
            small = post(client, json.dumps(EVENTS))
            large = post(client, json.dumps([{"action": "click", "pad": "x" * 3000}]))
            gz_large = post(client, b"\x1f\x8b" + b"x" * 2047)  # the limit is on the bytes received
    finally:
        app_module.runtime.reset()
    assert small.status_code == 202
    assert large.status_code == 413 and gz_large.status_code == 413
    assert queued(queue) == 1
    queue.close()


# -- nothing leaks ----------------------------------------------------------------------------------


def _missing_sqs_queue(moto_server: str) -> Settings:
    return load_settings(
        {
            "QUEUE_URL": f"{moto_server}/123456789012/does-not-exist-{time.time_ns()}",
            "AWS_ENDPOINT_URL_SQS": moto_server,
            "AWS_REGION": "us-east-1",
            "AWS_KEY": "AKIAPLANTED",
            "AWS_SECRET": PLANTED_AWS_SECRET,
            "FIREHOSE_TOKEN": TOKEN,
        },
        dotenv_path=None,
    )


def test_queue_failure_is_503_without_secrets(moto_server: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = _missing_sqs_queue(moto_server)
    queue = SqsQueue.from_settings(settings)
    app_module.runtime.reset(settings=settings, queue=queue)
    caplog.set_level(logging.DEBUG)
    try:
        with Client(app_module.app) as client:
            resp = post(client, json.dumps(EVENTS), Authorization=f"Bearer {TOKEN}")
    finally:
        app_module.runtime.reset()
    assert resp.status_code == 503 and "retry" in resp.json_body["error"]
    no_leak(resp.body.decode(), "the 503 response")
    no_leak(caplog.text, "the log")
    assert "queue refused" in caplog.text or "queue unavailable" in caplog.text
    no_leak(repr(settings), "repr(settings)")


def test_chalice_local_output_carries_no_secret(tmp_path: Path, moto_server: str) -> None:
    """A real `chalice local` with the token and an AWS secret in its environment."""
    client = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    url = client.create_queue(QueueName=f"leak-{time.time_ns()}")["QueueUrl"]
    env = {
        "QUEUE_URL": url,
        "AWS_ENDPOINT_URL_SQS": moto_server,
        "AWS_REGION": "us-east-1",
        "AWS_KEY": "AKIAPLANTED",
        "AWS_SECRET": PLANTED_AWS_SECRET,
        "FIREHOSE_TOKEN": TOKEN,
    }
    server = ChaliceLocal(env, tmp_path / "chalice.log")
    good = json.dumps(EVENTS).encode()
    try:
        replies = [
            server.post(good),
            server.post(good, {"Authorization": "Bearer wrong"}),
            server.post(good, {"Authorization": f"Bearer {TOKEN}"}),
            server.post(b"{broken", {"Authorization": f"Bearer {TOKEN}"}),
            server.post(gzip.compress(b"[" * 5000), {"Authorization": f"Bearer {TOKEN}", "Content-Encoding": "gzip"}),
            server.post(b"\xff\xfe", {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}),
        ]
    finally:
        server.stop()
    assert [status for status, _ in replies] == [401, 401, 202, 400, 400, 400]
    for _, body in replies:
        no_leak(body.decode(), "a response")
    output = server.output()
    assert "POST /events" in output  # the log was captured at all
    no_leak(output, "chalice local's output")


def test_worker_output_carries_no_secret(tmp_path: Path, moto_server: str) -> None:
    """The worker's log while SQS refuses it (a queue that does not exist) names no secret."""
    env = child_env(AWS_KEY="AKIAPLANTED", AWS_SECRET=PLANTED_AWS_SECRET, AWS_ENDPOINT_URL_SQS=moto_server)
    url = f"{moto_server}/123456789012/missing-{time.time_ns()}"
    worker = WorkerProcess(tmp_path / "db.sqlite", url, tmp_path, until_empty=False, env=env)
    try:
        # SIGTERM once the worker has met the refusal (its log says so), not after a guessed sleep.
        wait_for(lambda: "queue unreachable" in worker.output(), 60, "the worker to log 'queue unreachable'")
        worker.signal(signal.SIGTERM)
        rc = worker.wait(60)
    finally:
        worker.stop()
    output = worker.output()
    assert "queue unreachable" in output and rc == 0, output[-2000:]
    no_leak(output, "the worker's output")


# -- fuzz ---------------------------------------------------------------------------------------------

HEADER_TEXT = st.text(alphabet=string.printable.strip() + " ", max_size=60)
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=20,
)
EVENT = st.fixed_dictionaries(
    {"action": st.one_of(st.sampled_from(["click", "impression", "conversion"]), JSON_LEAF)},
    optional={"tune_event_id": st.one_of(st.text(max_size=20), st.integers()), "payout": JSON_LEAF, "x": JSON_VALUE},
)
DOCUMENT = st.one_of(
    JSON_VALUE,
    st.lists(EVENT, max_size=5),
    st.builds(
        lambda events, extra: {"events": events, **extra},
        st.lists(EVENT, max_size=5),
        st.dictionaries(st.text(max_size=8), JSON_LEAF, max_size=3),
    ),
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["json", "json-text", "binary", "text", "ndjson"]))
    if kind == "json":
        raw = json.dumps(draw(DOCUMENT)).encode()
    elif kind == "json-text":  # hand-made JSON-ish text: duplicate keys, bad escapes, truncation
        raw = draw(
            st.sampled_from(
                [
                    '{"action":"click","action":"x"}',
                    '[{"action":"click"',
                    '{"events":[{"a":"\\ud800"}]}',
                    '[{"action":"click","n":1e999}]',
                    '{"events":"nope"}',
                    "[]",
                ]
            )
        ).encode()
    elif kind == "binary":
        raw = draw(st.binary(max_size=400))
    elif kind == "text":
        raw = draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    else:
        raw = b"\n".join(json.dumps(draw(EVENT)).encode() for _ in range(draw(st.integers(0, 4))))
    layer = draw(st.sampled_from(["none", "gzip", "base64-gzip", "truncated-gzip", "base64"]))
    if layer == "gzip":
        raw = gzip.compress(raw)
    elif layer == "base64-gzip":
        raw = base64.b64encode(gzip.compress(raw))
    elif layer == "truncated-gzip":
        raw = gzip.compress(raw)[: draw(st.integers(0, 30))]
    elif layer == "base64":
        raw = base64.b64encode(raw)
    headers: dict[str, str] = {}
    ctype = draw(
        st.one_of(
            st.sampled_from(
                [
                    *sorted(ingest.ACCEPTED_TYPES),
                    "application/xml",
                    "multipart/form-data",
                    "application/json; charset=latin-1",
                ]
            ),
            HEADER_TEXT,
        )
    )
    if ctype:
        headers["Content-Type"] = ctype
    encoding = draw(st.one_of(st.sampled_from(["", "gzip", "x-gzip", "identity", "br", "deflate"]), HEADER_TEXT))
    if encoding:
        headers["Content-Encoding"] = encoding
    auth = draw(st.sampled_from(["right", "right", "right", "none", "wrong", "random"]))
    if auth == "right":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif auth == "wrong":
        headers["Authorization"] = "Bearer " + draw(HEADER_TEXT)
    elif auth == "random":
        headers["Authorization"] = draw(HEADER_TEXT)
    for name in draw(st.lists(st.sampled_from(["X-Forwarded-For", "Accept", "Accept-Encoding", "X-Junk"]), max_size=3)):
        headers[name] = draw(HEADER_TEXT)
    return raw, headers


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=bodies())
def test_fuzz_never_500_and_rejected_requests_enqueue_nothing(
    guarded: tuple[Client, LocalQueue], request: tuple[bytes, dict[str, str]]
) -> None:
    client, queue = guarded
    body, headers = request
    before = queued(queue)
    resp = client.http.post("/events", body=body, headers=headers)
    assert resp.status_code in (202, 400, 401, 413, 415), (resp.status_code, resp.body[:300])
    no_leak(resp.body.decode("utf-8", "replace"), "a response")
    reply = json.loads(resp.body)
    if resp.status_code == 202:
        assert queued(queue) == before + reply["messages"]
        received = queue.receive(10, 0, 60)
        assert sum(len(decode_body(m.body).events) for m in received) == reply["accepted"]
        queue.delete([m.receipt for m in received])
    else:
        assert set(reply) == {"error"}
        assert queued(queue) == before, "a rejected request enqueued something"


# -- on Lambda, no token means no service ------------------------------------------------------------------

SQS_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/tune-firehose-prod"


def cold_start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Import app.py as Lambda does at a cold start, in a clean directory (no .env), with `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("QUEUE_URL", "FIREHOSE_TOKEN", "ALLOW_ANONYMOUS")}
    return subprocess.run(
        [sys.executable, "-c", "import app"],
        cwd=tmp_path,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_on_lambda_without_a_token_the_cold_start_fails_saying_why(tmp_path: Path) -> None:
    """Finding 9: deployed without FIREHOSE_TOKEN, the endpoint accepted anyone's events."""
    done = cold_start(tmp_path, AWS_LAMBDA_FUNCTION_NAME="tune-firehose-prod", QUEUE_URL=SQS_URL)
    assert done.returncode != 0
    assert "SettingsError: FIREHOSE_TOKEN is not set on Lambda (function tune-firehose-prod)" in done.stderr
    assert "ALLOW_ANONYMOUS=true" in done.stderr


@pytest.mark.parametrize("extra", [{"FIREHOSE_TOKEN": TOKEN}, {"ALLOW_ANONYMOUS": "true"}], ids=["token", "anonymous"])
def test_on_lambda_a_token_or_an_explicit_opt_out_serves(tmp_path: Path, extra: dict[str, str]) -> None:
    done = cold_start(tmp_path, AWS_LAMBDA_FUNCTION_NAME="tune-firehose-prod", QUEUE_URL=SQS_URL, **extra)
    assert done.returncode == 0, done.stderr[-2000:]


def test_on_lambda_a_local_queue_is_refused(tmp_path: Path) -> None:
    """A deployed stage without QUEUE_URL would write a file on the function's disk that no worker reads."""
    done = cold_start(tmp_path, AWS_LAMBDA_FUNCTION_NAME="tune-firehose-dev", FIREHOSE_TOKEN=TOKEN)
    assert done.returncode != 0
    assert "QUEUE_URL must be an SQS queue URL on Lambda (function tune-firehose-dev)" in done.stderr


def test_off_lambda_the_endpoint_stays_open_without_a_token(tmp_path: Path) -> None:
    """chalice local and the tests: no AWS_LAMBDA_FUNCTION_NAME, no token, no refusal."""
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        settings = load_settings({"QUEUE_URL": f"local:{queue.path}"}, dotenv_path=None)
        runtime.check_can_serve(settings, {})
        app_module.runtime.reset(settings=settings, queue=queue)
        with Client(app_module.app) as client:
            assert post(client, json.dumps(EVENTS)).status_code == 202
    finally:
        app_module.runtime.reset()
        queue.close()
