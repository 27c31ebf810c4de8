"""The console's routes, all under /console (mounted by gateway/app.py while it is on).

Every route but the login page, its two assets and the login call needs a session
(`sessions.py`); every change needs the admin role, the session's CSRF token and a
request from the console's own origin (`guard.py`). Pages without a session redirect
to the login page; API calls get 401.

Keys and teams are changed through the admin API itself (gateway/http/admin.py, what
the CLI calls): `/console/api/admin/<path>` is `/admin/<path>` with the console's
session checks standing in for the admin key, which never reaches the browser. A
created key's plaintext comes back in that one response (never cached, never logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.console import spend
from gateway.console.guard import from_here, refusal
from gateway.console.parts import Console
from gateway.console.sessions import (
    LockedOut,
    Session,
    clear_cookie,
    cookie_value,
    set_cookie,
)
from gateway.errors import GatewayError
from gateway.http.admin import AdminAPI
from gateway.http.asgi import (
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    cancel_on_disconnect,
    client_address,
    read_body,
)
from gateway.services import Services

STATIC = Path(__file__).with_name("static")
PUBLIC_ASSETS = frozenset({"login.js", "console.css"})  # what the login page itself needs
_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
          ".css": b"text/css; charset=utf-8"}
_SECURITY = [  # on every console response
    (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:;"
     b" frame-ancestors 'none'; base-uri 'none'; form-action 'self'")]
_SESSION_RECHECK_S = 30.0  # a live stream notices a logout (or expiry) this soon


@dataclass(frozen=True, slots=True)
class Route:
    method: str  # "*": GET, POST, PUT and DELETE
    pattern: re.Pattern[str]
    handler: str  # a ConsoleApp method
    public: bool = False  # reachable without a session
    change: bool = False  # mutates: CSRF and origin checks
    admin: bool = False  # the admin role
    sample: str = ""  # a concrete path (tests walk the table)


def _route(method: str, path: str, handler: str, **flags: Any) -> Route:
    pattern = re.compile("^" + re.sub(r"\{(\w+)(:path)?\}", lambda m: (
        f"(?P<{m[1]}>.+)" if m[2] else f"(?P<{m[1]}>[^/]+)"), path) + "$")
    sample = re.sub(r"\{(\w+)(:path)?\}", lambda m: {"file": "app.js", "team": "t",
                                                     "key": "k"}.get(m[1], "teams"), path)
    return Route(method, pattern, handler, sample=sample, **flags)


ROUTES = (
    _route("GET", "/console", "app_page"),
    _route("GET", "/console/", "app_page"),
    _route("GET", "/console/login", "login_page", public=True),
    _route("GET", "/console/static/{file:path}", "asset"),  # public: PUBLIC_ASSETS only
    _route("POST", "/console/api/login", "login", public=True),
    _route("POST", "/console/api/logout", "logout", change=True),
    _route("GET", "/console/api/session", "session"),
    _route("GET", "/console/api/live", "live"),
    _route("GET", "/console/api/spend", "spend"),
    _route("POST", "/console/api/teams/{team}/keys/{key}/rotate", "rotate", change=True,
           admin=True),
    _route("*", "/console/api/admin/{rest:path}", "admin_api"),  # changes: see __call__
)


@dataclass(slots=True)
class Call:
    scope: Scope
    receive: Receive
    send: Send
    headers: dict[bytes, bytes]
    params: dict[str, str]
    session: Session | None
    sid: str | None


class ConsoleAdmin(AdminAPI):
    """The admin API, for the console: its session, role and CSRF checks (made before
    a call gets here) stand in for the admin key."""

    def _authorize(self, authorization: bytes | None, client: str | None) -> None:
        return None


class ConsoleApp:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.admin = ConsoleAdmin(services)
        self.assets = {str(p.relative_to(STATIC)): p.read_bytes()
                       for p in STATIC.rglob("*") if p.is_file()}

    @property
    def console(self) -> Console:
        console = self.services.console
        assert console is not None  # mounted only while it is on
        return console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        for route in ROUTES:
            found = route.pattern.match(path)
            if found and route.method in (method, "*"):
                break
        else:
            await _json(send, 404, {"error": f"no console route {method} {path}"})
            return
        headers = dict(scope["headers"])
        sid = cookie_value(headers.get(b"cookie"))
        call = Call(scope, receive, send, headers, found.groupdict(), None, sid)
        if not route.public:
            call.session = await self.console.sessions.get(sid)
            # The admin API's GETs are for every role; its changes for admins.
            admin_change = route.handler == "admin_api" and method != "GET"
            is_public = route.handler == "asset" and call.params["file"] in PUBLIC_ASSETS
            why = None if is_public else refusal(
                call.session, headers, self.console.config.allowed_origins,
                change=route.change or admin_change, admin=route.admin or admin_change)
            if why is not None:
                if why[0] == 401 and route.handler == "app_page":
                    await _redirect(send, "/console/login")
                else:
                    await _json(send, why[0], {"error": why[1]})
                return
        handler: Callable[[Call], Awaitable[None]] = getattr(self, route.handler)
        await handler(call)

    # -- pages ------------------------------------------------------------------------------

    async def app_page(self, call: Call) -> None:
        if call.scope["path"] == "/console":
            await _redirect(call.send, "/console/")
            return
        await self._file(call.send, "index.html")

    async def login_page(self, call: Call) -> None:
        await self._file(call.send, "login.html")

    async def asset(self, call: Call) -> None:
        await self._file(call.send, call.params["file"])

    async def _file(self, send: Send, name: str) -> None:
        body = self.assets.get(name)
        if body is None:
            await _json(send, 404, {"error": "no such file"})
            return
        ctype = _TYPES.get(Path(name).suffix, b"application/octet-stream")
        await _send(send, 200, body, ctype)

    # -- logging in and out -----------------------------------------------------------------

    async def login(self, call: Call) -> None:
        if not from_here(call.headers, self.console.config.allowed_origins):
            await _json(call.send, 403, {"error": "cross-site request refused"})
            return
        try:
            raw = await read_body(call.receive, 4096, call.headers.get(b"content-length"))
            key = orjson.loads(raw or b"{}").get("key")
        except (GatewayError, orjson.JSONDecodeError, AttributeError):
            await _json(call.send, 400, {"error": 'send {"key": "..."}'})
            return
        sessions = self.console.sessions
        try:
            who = sessions.identify(key, client_address(call.scope)) if isinstance(
                key, str) and key else None
        except LockedOut as locked:
            await _json(call.send, 429, {"error": str(locked)},
                        [(b"retry-after", b"%d" % max(1, round(locked.retry_after_s)))])
            return
        if who is None:
            await _json(call.send, 401, {"error": "that key is not a console key"})
            return
        sid, session = await sessions.create(*who)
        await _json(call.send, 200, session.public(),
                    [(b"set-cookie", set_cookie(sid, sessions.ttl_s, self._secure(call)))])

    async def logout(self, call: Call) -> None:
        await self.console.sessions.delete(call.sid or "")
        await _json(call.send, 200, {"logged_out": True},
                    [(b"set-cookie", clear_cookie(self._secure(call)))])

    def _secure(self, call: Call) -> bool:
        configured = self.console.config.secure_cookie
        return configured if configured is not None else call.scope.get("scheme") == "https"

    async def session(self, call: Call) -> None:
        assert call.session is not None
        cfg = self.services.config
        await _json(call.send, 200, {
            **call.session.public(), "models": sorted(cfg.models),
            "capture_content": cfg.telemetry.tracing.capture_content,
            "sample_per_s": cfg.console.sample_per_s})

    # -- data ---------------------------------------------------------------------------------

    async def live(self, call: Call) -> None:
        """Server-sent events: `hello` (recent history), then a `frame` a second."""
        send, feed = call.send, self.console.feed
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"x-accel-buffering", b"no"),
            *_SECURITY]})
        await send({"type": "http.response.body", "more_body": True,
                    "body": _event("hello", feed.hello())})

        async def stream() -> None:
            checked = time.monotonic()
            async with contextlib.aclosing(feed.frames()) as frames:
                async for frame in frames:
                    if time.monotonic() - checked > _SESSION_RECHECK_S:
                        if await self.console.sessions.get(call.sid) is None:
                            return  # logged out elsewhere, or expired
                        checked = time.monotonic()
                    await send({"type": "http.response.body", "more_body": True,
                                "body": _event("frame", frame)})

        # Until the client leaves (an SSE client only ever does that), or its session ends.
        await cancel_on_disconnect(call.scope, call.receive, stream(),
                                   asyncio.get_running_loop())
        await send({"type": "http.response.body", "body": b""})

    async def spend(self, call: Call) -> None:
        services = self.services
        await _json(call.send, 200, await spend.overview(services.accounts, services.store))

    # -- keys and teams, through the admin API -----------------------------------------------

    async def admin_api(self, call: Call) -> None:
        scope = {**call.scope, "path_params": {"rest": call.params["rest"]}}
        await self.admin(scope, call.receive, _with_security(call.send))

    async def rotate(self, call: Call) -> None:
        """A key's replacement: revoke it, then create one with the same id, name, limits
        and budget (its spend this period carries on); the new plaintext, once."""
        team, key_id = call.params["team"], call.params["key"]
        record = next((k for k in await self.services.accounts.keys(team)
                       if k.id == key_id), None)
        if record is None:
            await _json(call.send, 404, {"error": f"key {key_id!r} of team {team!r} not found"})
            return
        status, body = await self._admin_call("DELETE", f"teams/{team}/keys/{key_id}", b"")
        if status == 200:
            spec = {"id": key_id, "name": record.name,
                    "limits": record.limits.to_dict() if record.limits else None,
                    "budget": record.budget.to_dict() if record.budget else None}
            status, body = await self._admin_call("POST", f"teams/{team}/keys",
                                                  orjson.dumps(spec))
        await _send(call.send, status, body, b"application/json")

    async def _admin_call(self, method: str, rest: str, body: bytes) -> tuple[int, bytes]:
        """The admin API called in-process: (status, body)."""
        sent: list[Message] = []
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            return pending.pop() if pending else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": f"/admin/{rest}",
                 "path_params": {"rest": rest}, "query_string": b"",
                 "headers": [(b"content-length", b"%d" % len(body))]}
        await self.admin(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _with_security(send: Send) -> Send:
    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *_SECURITY]}
        await send(message)

    return secured


async def _send(send: Send, status: int, body: bytes, ctype: bytes,
                extra: Headers | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", ctype), (b"content-length", b"%d" % len(body)), *_SECURITY,
        *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: Any, extra: Headers | None = None) -> None:
    await _send(send, status, orjson.dumps(payload), b"application/json", extra)


async def _redirect(send: Send, location: str) -> None:
    await _send(send, 303, b"", b"text/plain", [(b"location", location.encode())])
