"""How the endpoint cuts a request into queue messages, where `make mutation` found no test to
say so (docs/mutation.md). What a 202 promises is what the worker can store, so for any events
and any limits that each event fits alone:

- every message is within both limits: as sent (`max_message_bytes`) and inflated
  (`max_decoded_bytes`, what the worker will inflate);
- the messages' events, read back in order, are the request's events, each once;
- each message carries the request's control fields;
- a limit is inclusive: a request that fits exactly in one message is one message.
"""

from __future__ import annotations

import base64
import gzip
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.codec import EventTooLarge, decode_body, encode_envelope, pack_events
from chalicelib.codec import dump_event as dumped

EXAMPLES = 500 if os.environ.get("FIREHOSE_FUZZ") else 60
CONTROL = {"account": "acme", "batch": 7}

_event = st.builds(
    lambda i, pad, n: {"action": "click", "tune_event_id": f"e{i}", "pad": pad, "n": n},
    st.integers(0, 10**6),
    st.text(alphabet="abcdefghij0123456789", max_size=400),
    st.integers(-(2**40), 2**40),
)


def _alone(event: dict[str, Any]) -> tuple[int, int]:
    """(bytes as sent, bytes inflated) of a message holding only this event."""
    body = encode_envelope([dumped(event)], CONTROL)
    return len(body), len(gzip.decompress(base64.b64decode(body)))


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    events=st.lists(_event, min_size=1, max_size=60),
    slack_sent=st.integers(0, 6000),
    slack_decoded=st.integers(0, 12000),
)
def test_every_message_fits_and_together_they_are_the_request(
    events: list[dict[str, Any]], slack_sent: int, slack_decoded: int
) -> None:
    # Limits anywhere from "the largest event alone, exactly" upwards: each event fits alone.
    sent_limit = max(_alone(e)[0] for e in events) + slack_sent
    decoded_limit = max(_alone(e)[1] for e in events) + slack_decoded
    packed = pack_events(events, sent_limit, control=CONTROL, max_decoded_bytes=decoded_limit)
    back: list[Any] = []
    for p in packed:
        assert len(p.body) <= sent_limit
        assert len(gzip.decompress(base64.b64decode(p.body))) <= decoded_limit
        decoded = decode_body(p.body, max_bytes=decoded_limit)
        assert decoded.control.items() >= CONTROL.items(), decoded.control
        assert p.event_count == len(decoded.events) > 0
        back += decoded.events
    assert back == events


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(events=st.lists(_event, min_size=1, max_size=30))
def test_a_request_that_fits_exactly_is_one_message(events: list[dict[str, Any]]) -> None:
    body = encode_envelope([dumped(e) for e in events], CONTROL)
    inflated = len(gzip.decompress(base64.b64decode(body)))
    [one] = pack_events(events, len(body), control=CONTROL, max_decoded_bytes=inflated)
    assert one.body == body and one.event_count == len(events)


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(event=_event)
def test_the_per_event_limit_is_inclusive(event: dict[str, Any]) -> None:
    size = len(dumped(event))
    [one] = pack_events([event], 10**6, max_event_bytes=size)
    assert decode_body(one.body).events == [event]
    with pytest.raises(EventTooLarge):
        pack_events([event], 10**6, max_event_bytes=size - 1)
