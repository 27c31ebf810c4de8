"""Console logins and their server-side sessions.

A person logs in with the admin key (`auth.admin_key`, role admin) or their own console
key (`console.users`, role read-only or admin). The key is checked once, here, and
never stored or sent back: the browser gets a random session id in an HttpOnly,
SameSite=Strict cookie scoped to /console. The session lives in the store (Redis: every
worker and replica sees it; logging out anywhere ends it everywhere) under the SHA-256
of that id, with the user, the role and the session's CSRF token, and expires after
`console.session_ttl_s`. Each request resolves the user against the config again, so a
user removed from it (or an admin key unset) is logged out at the next restart.

Failed logins count against the client's address like failed API keys
(`auth.lockout`): guessing console keys gets locked out too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from gateway.console.settings import ConsoleConfig, Role
from gateway.store import Store, layout
from policies.lockout import Lockout

COOKIE = "turnout_console"
ADMIN_USER = "admin"  # who logs in with auth.admin_key
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_ID_LEN = 43  # secrets.token_urlsafe(32)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    role: Role
    csrf: str  # sent back in `x-csrf-token` with every change
    expires: float  # wall clock

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def public(self) -> dict[str, object]:
        return {"user": self.user, "role": self.role, "csrf": self.csrf,
                "expires": self.expires}


class LockedOut(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__("too many failed logins from this address")
        self.retry_after_s = retry_after_s


class Sessions:
    def __init__(self, store: Store, cfg: ConsoleConfig, admin_key: str | None,
                 lockout: Lockout) -> None:
        self.store = store
        self.ttl_s = cfg.session_ttl_s
        # Digests, compared in constant time: a login's timing says nothing of the keys.
        self._admin = _digest(admin_key) if admin_key else None
        self._users = [(_digest(u.key), u.name, u.role) for u in cfg.logins()]
        self._roles: dict[str, Role] = {u.name: u.role for u in cfg.logins()}
        if admin_key:
            self._roles.setdefault(ADMIN_USER, "admin")
        self._lockout = lockout

    def identify(self, key: str, client: str | None) -> tuple[str, Role] | None:
        """The (user, role) a console key belongs to; None (a failure, counted) if none."""
        wait = self._lockout.retry_after(client)
        if wait is not None:
            raise LockedOut(wait)
        given = _digest(key)
        found: tuple[str, Role] | None = None
        for digest, name, role in self._users:  # every one compared: no early exit
            if hmac.compare_digest(digest, given):
                found = (name, role)
        if self._admin is not None and hmac.compare_digest(self._admin, given):
            found = (ADMIN_USER, "admin")
        if found is None:
            self._lockout.failed(client)
        return found

    async def create(self, user: str, role: Role) -> tuple[str, Session]:
        """A new session: (the cookie's id, the session)."""
        sid = secrets.token_urlsafe(32)
        session = Session(user, role, secrets.token_urlsafe(32), time.time() + self.ttl_s)
        await self.store.set(layout.console_session(hashlib.sha256(sid.encode()).hexdigest()),
                             orjson.dumps({"user": user, "role": role, "csrf": session.csrf,
                                           "expires": session.expires}), ttl_s=self.ttl_s)
        return sid, session

    async def get(self, sid: str | None) -> Session | None:
        """The live session of a cookie's id; None when there is none (or it expired, or
        its user is no longer configured)."""
        if not sid or len(sid) != _ID_LEN or not _ID_CHARS.issuperset(sid):
            return None  # not one of ours: no store round trip
        raw = await self.store.get(layout.console_session(
            hashlib.sha256(sid.encode()).hexdigest()))
        if raw is None:
            return None
        data = orjson.loads(raw)
        role = self._roles.get(data["user"])
        if role is None or data["expires"] <= time.time():
            return None
        # The config's role now, not the one at login: a demotion applies at once.
        return Session(data["user"], role, data["csrf"], data["expires"])

    async def delete(self, sid: str) -> None:
        if sid:
            await self.store.delete(layout.console_session(
                hashlib.sha256(sid.encode()).hexdigest()))


def cookie_value(cookie_header: bytes | None) -> str | None:
    """The session id in a `Cookie` header (None: absent)."""
    if not cookie_header:
        return None
    for part in cookie_header.decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def set_cookie(sid: str, max_age_s: float, secure: bool) -> bytes:
    # HttpOnly: page scripts never see it; SameSite=Strict: no other site's page can make
    # the browser send it; Path: only the console's routes get it.
    attrs = f"{COOKIE}={sid}; Path=/console; Max-Age={int(max_age_s)}; HttpOnly; SameSite=Strict"
    return (attrs + ("; Secure" if secure else "")).encode()


def clear_cookie(secure: bool) -> bytes:
    return set_cookie("", 0, secure)
