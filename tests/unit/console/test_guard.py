"""What a console request needs: a session for anything, and for a change the admin role,
the session's CSRF token and an origin that is the console's own."""

from __future__ import annotations

from gateway.console.guard import csrf_ok, from_here, refusal
from gateway.console.sessions import Session

ADMIN = Session("ops", "admin", "tok-123", 0.0)
VIEWER = Session("viewer", "read-only", "tok-456", 0.0)
HOST = {b"host": b"gw.example:8080"}


def test_origins() -> None:
    assert from_here(HOST)  # not a browser: no Origin, no Sec-Fetch-Site
    assert from_here({**HOST, b"origin": b"http://gw.example:8080"})
    assert from_here({**HOST, b"origin": b"https://gw.example:8080"})  # behind TLS
    assert not from_here({**HOST, b"origin": b"https://evil.example"})
    assert not from_here({**HOST, b"origin": b"null"})
    assert not from_here({**HOST, b"sec-fetch-site": b"cross-site"})
    assert not from_here({**HOST, b"sec-fetch-site": b"same-site"})
    assert from_here({**HOST, b"sec-fetch-site": b"same-origin"})
    proxied = {**HOST, b"origin": b"https://console.example"}
    assert from_here(proxied, ["https://console.example"])
    assert not from_here({b"origin": b"http://gw.example:8080"})  # no Host to match


def test_csrf_token() -> None:
    assert csrf_ok(ADMIN, {b"x-csrf-token": b"tok-123"})
    assert not csrf_ok(ADMIN, {b"x-csrf-token": b"tok-456"})
    assert not csrf_ok(ADMIN, {})


def test_refusals() -> None:
    good = {**HOST, b"x-csrf-token": b"tok-123", b"origin": b"http://gw.example:8080"}
    assert refusal(None, good, [], change=False, admin=False) == (401, "log in to the console"
                                                                   " first")
    assert refusal(VIEWER, HOST, [], change=False, admin=False) is None  # reading
    assert refusal(ADMIN, good, [], change=True, admin=True) is None
    no_token = {k: v for k, v in good.items() if k != b"x-csrf-token"}
    assert refusal(ADMIN, no_token, [], change=True, admin=True)[0] == 403  # type: ignore[index]
    cross = {**good, b"origin": b"https://evil.example"}
    assert "cross-site" in refusal(ADMIN, cross, [], change=True, admin=True)[1]  # type: ignore[index]
    viewer = {**good, b"x-csrf-token": b"tok-456"}
    assert "read-only" in refusal(VIEWER, viewer, [], change=True, admin=True)[1]  # type: ignore[index]
    assert refusal(VIEWER, viewer, [], change=True, admin=False) is None  # e.g. logging out
