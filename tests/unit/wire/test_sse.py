from __future__ import annotations

from gateway.wire.sse import SSEEvent, SSEParser, encode


def feed_all(raw: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events = [ev for line in raw.splitlines(keepends=True)
              if (ev := parser.feed_line(line)) is not None]
    last = parser.flush()
    return events + ([last] if last else [])


def test_openai_style_events() -> None:
    raw = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    assert [e.data for e in feed_all(raw)] == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


def test_named_events_multiline_data_comments_and_crlf() -> None:
    raw = (b": ping\r\n\r\nevent: message_start\r\ndata: {\"x\":\r\ndata: 1}\r\n\r\n"
           b"event: ping\ndata: {}\n\n")
    events = feed_all(raw)
    assert events == [SSEEvent(b'{"x":\n1}', b"message_start"), SSEEvent(b"{}", b"ping")]


def test_unterminated_last_event_is_flushed() -> None:
    assert [e.data for e in feed_all(b"data: tail")] == [b"tail"]


def test_encode_round_trip() -> None:
    assert feed_all(encode(b'{"k":"v"}') + encode(b"{}", b"error")) == [
        SSEEvent(b'{"k":"v"}'), SSEEvent(b"{}", b"error")]
