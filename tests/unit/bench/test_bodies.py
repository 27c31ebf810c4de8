"""The load clients' bodies: a `unique` body is numbered afresh per request at a constant
length (Content-Length never changes), the others are sent as they are."""

from __future__ import annotations

import json

from bench.bodies import MARK, Numbered, request_body


def test_unique_bodies_differ_per_request_and_keep_their_length() -> None:
    body = request_body(False, "unique")
    assert MARK in body
    numbered = Numbered(body)
    sent = [numbered.next() for _ in range(1000)]
    assert len(set(sent)) == 1000 and {len(b) for b in sent} == {len(body)}
    first = json.loads(sent[0])
    assert first["temperature"] == 0 and "stream" not in first
    assert Numbered(body).next() != sent[0]  # another run: another salt


def test_plain_and_repeat_bodies_are_sent_as_they_are() -> None:
    plain, repeat = request_body(False), request_body(True, "repeat")
    assert Numbered(plain).next() == Numbered(plain).next() == plain
    assert "temperature" not in json.loads(plain)
    streamed = json.loads(repeat)
    assert streamed["temperature"] == 0 and streamed["stream"] is True
    # Its streamed requests ask another prompt than its plain ones (another cache entry).
    assert streamed["messages"] != json.loads(request_body(False, "repeat"))["messages"]
