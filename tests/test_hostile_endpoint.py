"""Issue 12 (the endpoint class) and issue 16 (the endpoint fuzz): hostile values inside valid requests.

The old fuzz stopped at the first check (token, content type) for most requests. Here generators
build whole requests that are mostly valid: events with `action`, the right token, an accepted
content type and encoding (a JSON envelope, list or single event; NDJSON; RFC 7464 json-seq; gzip;
TUNE's base64(gzip)), with hostile values inside them (arbitrary JSON in other fields, huge and
tiny numbers, deep nesting, lone surrogates, hostile values in the typed fields the worker
coerces), plus some hostile headers and bodies. Each request is posted through
`chalice.test.Client` on app.py with a local queue, and what was accepted is drained at once by
the worker into SQLite.

Invariants, for every request:
- the status is a documented one and never 500 (the queue here never fails, so never 503 either);
- a 4xx queues nothing;
- a 202 accepts every event, and the worker then stores each exactly once: counted by key against
  the input, an event with hostile values only in free fields lands in `events`; one with a
  hostile value in a typed field lands in `events` or as one reject row with a reason; no message
  is rejected whole and nothing that was not sent appears;
- a request built valid gets 202, and one built to be refused gets a 4xx.

Bounded by default; FIREHOSE_FUZZ=1 runs ten times as many requests.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app as app_module
from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings
from tests.kit import drain, rows

TOKEN = "hostile-endpoint-token-0123456789"
FUZZ = os.environ.get("FIREHOSE_FUZZ") == "1"
EXAMPLES = 2000 if FUZZ else 200
_ids = itertools.count()
OUTCOMES: dict[str, int] = {}  # status -> requests, for the share of 202s printed at the end
SEEN_REJECTS = [0]  # the rowid of the last reject row an example has counted: each counts its own


@dataclass
class Request:
    body: bytes
    headers: dict[str, str]
    events: list[dict[str, Any]]
    expect: str  # "202", "4xx", or "any" (JSON extensions such as NaN, that a stricter parser may refuse)
    typed_hostile: set[str] = field(default_factory=set)  # keys of events with a hostile typed field
    shape: str = ""


# -- values ------------------------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)  # lone surrogates only where meant
PLAIN = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
EXTREME = st.one_of(
    st.sampled_from([10**400, -(10**300), 2**64, -(2**63) - 1, 5e-324, 1e-300, 1.7976931348623157e308, 1e15, -0.0]),
    st.text(alphabet=st.characters(min_codepoint=0x80, codec="utf-8"), min_size=1, max_size=20),  # non-ASCII, astral
    st.sampled_from(["", " ", "\u2028", "\x00", "\\", '"', "null", "NaN"]),
)


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def json_values(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
        max_leaves=8,
    )


VALUE = json_values(st.one_of(PLAIN, PLAIN, PLAIN, EXTREME))
FREE_NAME = TEXT.map(lambda name: f"x_{name}")  # never a column the worker types
TYPED_NAMES = ["offer_id", "affiliate_id", "goal_id", "payout", "revenue", "sale_amount", "num"]
TYPED_NAMES += ["datetime", "transaction_id", "ip", "currency", "is_click_unique", "created_timestamp"]
ACTIONS = st.sampled_from(["click", "impression", "conversion", "Conversion", " click ", "open", "install"])


def rare(draw: st.DrawFn, percent: int) -> bool:
    """True about `percent` times in 100. Hypothesis leans to small integers, so rare is the top end."""
    return draw(st.integers(0, 99)) >= 100 - percent


@st.composite
def an_event(draw: st.DrawFn) -> tuple[dict[str, Any], str, bool]:
    """(event without its key, what the endpoint must answer, whether a typed field is hostile)."""
    event: dict[str, Any] = {"action": draw(ACTIONS)}
    event.update(draw(st.dictionaries(FREE_NAME, VALUE, max_size=6)))
    expect = "202"
    typed = rare(draw, 15)
    if typed:
        event[draw(st.sampled_from(TYPED_NAMES))] = draw(VALUE)
    twist = "none"
    if rare(draw, 10):
        twist = draw(st.sampled_from(["deep-ok", "nan", "deep", "surrogate", "surrogate-key", "action"]))
    if twist == "deep-ok":  # 99 lists inside the event: 100 levels, the limit
        event["x_deep"] = nested(draw(PLAIN), draw(st.integers(1, 99)))
    elif twist == "deep":
        event["x_deep"] = nested(draw(PLAIN), draw(st.integers(100, 1200)))
        expect = "4xx"
    elif twist == "surrogate":
        event["x_s"] = draw(st.sampled_from(["\ud800", "a\udfffb", ["\udc00"]]))
        expect = "4xx"
    elif twist == "surrogate-key":
        event["x_\ud800"] = 1
        expect = "4xx"
    elif twist == "nan":
        event["x_n"] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        expect = "any"
    elif twist == "action":
        event["action"] = draw(st.one_of(st.just(""), st.just("  "), VALUE.filter(lambda v: not isinstance(v, str))))
        expect = "4xx"
    return event, expect, typed


def worst(expectations: list[str]) -> str:
    return "4xx" if "4xx" in expectations else "any" if "any" in expectations else "202"


def with_key(event: dict[str, Any], kind: int) -> tuple[dict[str, Any], str]:
    """The event with a unique key (unique across the whole run, so examples never collide)."""
    n = next(_ids)
    if kind == 0:
        return {"tune_event_id": n + 10**12, **event}, str(n + 10**12)
    if kind == 1:
        return {"event_id": f"e{n}", **event}, f"e{n}"
    return {"tune_event_id": f"h{n}", **event}, f"h{n}"


# -- requests ----------------------------------------------------------------------------------------------


def dumps(value: Any, pretty: bool = False, ascii_only: bool = True) -> bytes:
    """JSON as producers write it: ASCII with escapes (a lone surrogate as the valid JSON `\\ud800`), or
    UTF-8 (a lone surrogate then as the invalid bytes a sloppy producer sends)."""
    text = json.dumps(value, indent=2 if pretty else None, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


SHAPES = ["envelope", "envelope", "list", "single", "ndjson", "json-seq", "gzip", "tune", "tune-octet", "pretty"]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    drawn = draw(st.lists(an_event(), min_size=1, max_size=6))
    events, keys, typed = [], [], set()
    for event, _, is_typed in drawn:
        keyed, key = with_key(event, draw(st.sampled_from([2, 2, 2, 0, 1])))
        events.append(keyed)
        keys.append(key)
        if is_typed:
            typed.add(key)
    if rare(draw, 10):  # the same event twice in one request: stored once
        events.append(events[0])
    expect = worst([e for _, e, _ in drawn])
    shape = draw(st.sampled_from(SHAPES))
    if shape == "single":
        events = events[:1]
        expect = worst([drawn[0][1]])
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    ascii_only = draw(st.booleans())
    control = draw(st.dictionaries(TEXT.filter(lambda k: k != "events"), VALUE, max_size=3))
    if shape in ("envelope", "gzip", "tune", "tune-octet", "pretty"):
        body = dumps({**control, "events": events}, pretty=shape == "pretty", ascii_only=ascii_only)
    elif shape == "list":
        body = dumps(events, ascii_only=ascii_only)
    elif shape == "single":
        body = dumps(events[0], ascii_only=ascii_only)
    elif shape == "ndjson":
        headers["Content-Type"] = draw(st.sampled_from(["application/x-ndjson", "application/jsonlines"]))
        body = b"\n".join(dumps(e, ascii_only=ascii_only) for e in events) + b"\n"
    else:
        headers["Content-Type"] = "application/json-seq"
        body = b"".join(b"\x1e" + dumps(e, draw(st.booleans()), ascii_only) + b"\n" for e in events)
    if shape == "gzip" or (shape in ("ndjson", "json-seq") and draw(st.booleans())):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif shape in ("tune", "tune-octet"):
        body = base64.b64encode(gzip.compress(body))
        headers["Content-Type"] = "text/plain" if shape == "tune" else "application/octet-stream"
    request = Request(body, headers, events, expect, typed, shape)
    return hostile_envelope(draw, request) if rare(draw, 8) else request


def hostile_envelope(draw: st.DrawFn, request: Request) -> Request:
    """Spoil a request at the HTTP level: it must then be refused, and queue nothing."""
    spoil = draw(st.sampled_from(["token", "no-token", "type", "encoding", "truncate", "garbage", "empty"]))
    headers = dict(request.headers)
    body = request.body
    if spoil == "token":
        headers["Authorization"] = "Bearer " + draw(st.text(alphabet="abcdef0123456789-", max_size=40))
    elif spoil == "no-token":
        del headers["Authorization"]
    elif spoil == "type":
        headers["Content-Type"] = draw(st.sampled_from(["application/xml", "multipart/form-data", "image/png"]))
    elif spoil == "encoding":
        headers["Content-Encoding"] = draw(st.sampled_from(["br", "deflate", "compress"]))
    elif spoil == "truncate":
        body = body[: max(1, len(body) // 2)]
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body)[:-6]  # a gzip stream cut short: never readable
    elif spoil == "garbage":
        body = b"\xff\xfe" + draw(st.binary(max_size=200))
    else:
        body = b""
    return Request(body, headers, request.events, "4xx", request.typed_hostile, f"{request.shape}+{spoil}")


# -- the test ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, LocalQueue, Path]]:
    """The app on a local queue, with a token; one queue and one database for all the examples."""
    tmp = tmp_path_factory.mktemp("hostile-endpoint")
    queue = LocalQueue(tmp / "queue.db")
    settings_ = load_settings({"QUEUE_URL": f"local:{queue.path}", "FIREHOSE_TOKEN": TOKEN}, dotenv_path=None)
    app_module.runtime.reset(settings=settings_, queue=queue)
    with Client(app_module.app) as client:
        yield client, queue, tmp / "firehose.db"
    app_module.runtime.reset()
    queue.close()
    statuses = {k: v for k, v in OUTCOMES.items() if k.isdigit()}
    share = OUTCOMES.get("202", 0) / max(1, sum(statuses.values()))
    print(f"\n[hostile-endpoint] {sum(statuses.values())} requests, {share:.0%} answered 202: {OUTCOMES}")


def queued(queue: LocalQueue) -> int:
    depth = queue.depth()
    return depth.visible + depth.in_flight


def key_of(event: Any) -> str | None:
    for name in ("tune_event_id", "event_id"):
        if name in event:
            return str(event[name])
    return None


@settings(
    max_examples=EXAMPLES,
    derandomize=not FUZZ,  # the default run is the same every time (its figures too); `make fuzz` explores
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
def test_hostile_values_inside_valid_requests(stack: tuple[Client, LocalQueue, Path], request: Request) -> None:
    client, queue, db = stack
    assert queued(queue) == 0
    resp = client.http.post("/events", body=request.body, headers=request.headers)
    status = str(resp.status_code)
    OUTCOMES[status] = OUTCOMES.get(status, 0) + 1
    assert resp.status_code in (202, 400, 401, 413, 415), (request.shape, resp.status_code, resp.body[:300])
    reply = json.loads(resp.body)
    if resp.status_code != 202:
        assert set(reply) == {"error"}, reply
        assert queued(queue) == 0, "a refused request queued something"
        assert request.expect != "202", (request.shape, reply["error"])
        return
    assert request.expect != "4xx", (request.shape, "accepted a request built to be refused")
    assert reply["accepted"] == len(request.events)
    assert queued(queue) == reply["messages"]
    drain(queue, db)
    assert queued(queue) == 0
    keys = {key_of(e) for e in request.events}
    placeholders = ",".join("?" * len(keys))
    stored = [
        k for (k,) in rows(db, f"SELECT tune_event_id FROM events WHERE tune_event_id IN ({placeholders})", *keys)
    ]
    # Once per key is the primary key's job; what this test owns is that none is missing (below).
    rejected: list[str | None] = []
    seen = SEEN_REJECTS[0]
    for rowid, index, reason, raw in rows(
        db, "SELECT rowid, event_index, reason, raw FROM rejects WHERE rowid > ? ORDER BY rowid", seen
    ):
        SEEN_REJECTS[0] = max(SEEN_REJECTS[0], rowid)
        assert index is not None, f"a whole message was rejected after a 202: {reason}"
        rejected.append(key_of(json.loads(raw)))
    assert set(rejected) <= request.typed_hostile, f"events rejected though only free fields were hostile: {rejected}"
    assert len(rejected) == len(set(rejected)), "one event rejected twice"
    assert set(stored).isdisjoint(rejected), "an event both stored and rejected"
    assert set(stored) | set(rejected) == keys, f"lost after a 202: {sorted(keys - set(stored) - set(rejected))}"
    OUTCOMES["events stored"] = OUTCOMES.get("events stored", 0) + len(stored)
    OUTCOMES["events rejected by the worker"] = OUTCOMES.get("events rejected by the worker", 0) + len(rejected)
