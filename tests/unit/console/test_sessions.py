"""Console logins and sessions: which keys log in as whom, sessions in the store (hashed,
expiring, ended by logout), roles resolved from the config on every request, lockouts,
and the cookie's attributes."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway.console import sessions as sessions_module
from gateway.console.sessions import (
    COOKIE,
    LockedOut,
    Sessions,
    clear_cookie,
    cookie_value,
    set_cookie,
)
from gateway.console.settings import ConsoleConfig, ConsoleUser
from gateway.store import MemoryStore, layout
from policies.lockout import Lockout

ADMIN = "admin-key-0123456789abcdefghijklmnopq"
VIEWER = "viewer-key-0123456789abcdefghijklmnop"
OPS = "ops-key-0123456789abcdefghijklmnopqrst"


def config(*users: ConsoleUser) -> ConsoleConfig:
    return ConsoleConfig(users=list(users) or [  # type: ignore[call-arg]
        ConsoleUser(name="viewer", key=VIEWER),
        ConsoleUser(name="ops", key=OPS, role="admin")])


def sessions(store: MemoryStore | None = None, cfg: ConsoleConfig | None = None,
             lockout: Lockout | None = None) -> Sessions:
    return Sessions(store or MemoryStore(), cfg or config(), ADMIN, lockout or Lockout(0, 60))


def test_keys_identify_users_and_roles() -> None:
    s = sessions()
    assert s.identify(ADMIN, "1.2.3.4") == ("admin", "admin")
    assert s.identify(VIEWER, "1.2.3.4") == ("viewer", "read-only")
    assert s.identify(OPS, "1.2.3.4") == ("ops", "admin")
    assert s.identify(ADMIN[:-1] + "x", "1.2.3.4") is None
    assert s.identify("", "1.2.3.4") is None


def test_guessing_locks_the_address_out() -> None:
    s = sessions(lockout=Lockout(3, 60))
    for _ in range(3):
        assert s.identify("wrong-" * 8, "6.6.6.6") is None
    with pytest.raises(LockedOut) as locked:
        s.identify(ADMIN, "6.6.6.6")
    assert locked.value.retry_after_s > 0
    assert s.identify(ADMIN, "7.7.7.7") == ("admin", "admin")  # others are not affected


async def test_a_session_lives_in_the_store_hashed_until_logout() -> None:
    store = MemoryStore()
    s = sessions(store)
    sid, created = await s.create("viewer", "read-only")
    got = await s.get(sid)
    assert got == created and got is not None and not got.admin
    assert len(got.csrf) >= 32 and got.csrf != sid
    stored = await store.get(layout.console_session(hashlib.sha256(sid.encode()).hexdigest()))
    assert stored is not None and sid.encode() not in stored  # never the cookie itself
    other = sessions(store)  # another worker sees it through the store
    assert await other.get(sid) == created
    await other.delete(sid)
    assert await s.get(sid) is None


async def test_unknown_malformed_and_expired_sessions_are_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = sessions()
    assert await s.get(None) is None
    assert await s.get("x" * 43) is None  # well formed, unknown
    assert await s.get("../../etc") is None
    sid, created = await s.create("ops", "admin")

    class Later:
        @staticmethod
        def time() -> float:
            return created.expires + 1

    monkeypatch.setattr(sessions_module, "time", Later)
    assert await s.get(sid) is None


async def test_roles_come_from_the_config_of_the_day() -> None:
    store = MemoryStore()
    sid, _ = await sessions(store).create("ops", "admin")
    demoted = sessions(store, config(ConsoleUser(name="ops", key=OPS)))
    got = await demoted.get(sid)
    assert got is not None and got.role == "read-only"
    removed = sessions(store, config(ConsoleUser(name="viewer", key=VIEWER)))
    assert await removed.get(sid) is None
    no_admin = Sessions(store, config(), None, Lockout(0, 60))
    admin_sid, _ = await sessions(store).create("admin", "admin")
    assert await no_admin.get(admin_sid) is None  # the admin key was unset since


def test_cookie_attributes_and_parsing() -> None:
    cookie = set_cookie("abc", 3600, secure=False).decode()
    assert cookie.startswith(f"{COOKIE}=abc;")
    for attr in ("HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=3600"):
        assert attr in cookie
    assert "Secure" not in cookie and "; Secure" in set_cookie("abc", 1, secure=True).decode()
    assert "Max-Age=0" in clear_cookie(False).decode()
    assert cookie_value(f"a=1; {COOKIE}=xyz; b=2".encode()) == "xyz"
    assert cookie_value(b"a=1") is None and cookie_value(None) is None


def test_config_rejects_weak_or_shared_console_keys() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ConsoleUser(name="x", key="short")
    cfg = config()
    problems: list[Any] = cfg.problems(VIEWER, [])
    assert any("the same" in p for p in problems)
    assert ConsoleConfig(enabled=True).problems(None, [])  # type: ignore[call-arg]
    assert not cfg.problems(ADMIN, ["tk-other"])
    assert cfg.on(None) and not ConsoleConfig().on(None)  # type: ignore[call-arg]
    assert ConsoleConfig().on(ADMIN)  # type: ignore[call-arg]
