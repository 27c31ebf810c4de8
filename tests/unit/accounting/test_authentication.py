"""Teams and keys in the config: validation, and what a key authenticates as."""

from __future__ import annotations

import pytest

from gateway.accounting.accounts import team_policy
from gateway.accounting.admission import bearer
from gateway.config import ConfigError, parse_config
from gateway.errors import GatewayError
from gateway.store import MemoryStore
from policies.keys import Principal, hash_key, new_key
from policies.lockout import Lockout
from tests.support.accounts import authentication

BASE = {
    "pools": [{"name": "gpu", "endpoints": ["http://127.0.0.1:8000"]}],
    "models": {m: {"deployments": [{"target": "gpu", "model": "t"}]} for m in ("a", "b")},
}
KEY = "tk-config-key-0123456789"


def test_keys_and_teams_are_validated() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "auth": {"admin_key": "short"}, "teams": [
            {"name": "x", "models": ["zzz"], "keys": [{"id": "k", "key": KEY},
                                                      {"id": "k", "key": KEY + "2"}]},
            {"name": "x"}, {"name": "bad name"},
            {"name": "y", "keys": [{"id": "k", "key": "tiny"}]},
        ]})
    problems = "\n".join(info.value.problems)
    for expected in ("auth.admin_key: must be at least 32", "teams.2.name:",
                     "teams.3.keys.0.key: must be at least 16"):
        assert expected in problems, problems
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "teams": [
            {"name": "x", "models": ["zzz"], "keys": [{"id": "k", "key": KEY},
                                                      {"id": "k", "key": KEY + "2"}]},
            {"name": "x"}]})
    assert set(info.value.problems) == {"teams: team 'x' is declared twice",
                                        "teams.0.keys: key id 'k' is used twice",
                                        "teams.0.models: unknown model 'zzz'"}


def test_no_teams_means_anonymous_access() -> None:
    assert parse_config(BASE).auth_required is False
    assert parse_config({**BASE, "auth": {"admin_key": "${UNSET_ADMIN_KEY_VAR}"}}).auth.admin_key \
        is None


async def test_principal_from_config_key() -> None:
    cfg = parse_config({**BASE, "teams": [{
        "name": "t", "priority": 3, "models": ["a"], "limits": {"rpm": 9},
        "key_limits": {"tpm": 100}, "budget": {"usd": 2.5, "period": "daily"},
        "keys": [{"id": "k1", "key": KEY}, {"id": "k2", "key": KEY + "x",
                                            "limits": {"rpm": 1}}]}]})
    store = MemoryStore()
    authenticator, accounts = authentication(store, cfg.teams, 5)
    await accounts.start(cfg.teams)
    p = await authenticator.authenticate(f"Bearer {KEY}".encode())
    assert p == Principal.of(team_policy(cfg.teams[0]), (await accounts.keys("t"))[0])
    assert (p.team, p.key_id, p.priority, p.team_limits.rpm, p.key_limits.tpm) == \
        ("t", "k1", 3, 9, 100)
    assert p.team_budget is not None and p.team_budget.nanos == 2_500_000_000
    assert p.may_use("a") and not p.may_use("b")
    own = await authenticator.authenticate(f"bearer {KEY}x".encode())
    assert (own.key_limits.rpm, own.key_limits.tpm) == (1, 0)  # its own limits replace
    for header in (None, b"Basic abc", f"Bearer {new_key()}".encode()):
        with pytest.raises(GatewayError) as info:
            await authenticator.authenticate(header)
        assert info.value.status == 401


def test_key_format_and_hash() -> None:
    key = new_key()
    assert key.startswith("tk-") and len(key) == 46 and key != new_key()
    assert len(hash_key(key)) == 64 and hash_key(key) != key
    assert bearer(b"Bearer  abc ") == "abc" and bearer(b"Bearer ") is None


class CountingStore(MemoryStore):
    """Counts the key lookups that reach the store."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return await super().get(key)


async def test_guessing_keys_from_one_address_locks_it_out_but_not_known_keys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    cfg = parse_config({**BASE, "teams": [{"name": "t", "keys": [
        {"id": "k1", "key": KEY}, {"id": "k2", "key": KEY + "2"}]}]})
    store = CountingStore()
    auth, accounts = authentication(store, cfg.teams, 0,
                                    lockout=Lockout(5, 60.0, clock=lambda: now[0]))
    await accounts.start(cfg.teams)
    await auth.authenticate(f"Bearer {KEY}".encode(), client="10.0.0.1")  # seen to succeed
    store.gets = 0
    for _ in range(5):
        with pytest.raises(GatewayError) as info:
            await auth.authenticate(f"Bearer {new_key()}".encode(), client="10.0.0.1")
        assert info.value.status == 401
    lookups = store.gets
    for _ in range(100):  # locked out: refused at once, no store lookup
        with pytest.raises(GatewayError) as info:
            await auth.authenticate(f"Bearer {new_key()}".encode(), client="10.0.0.1")
        assert (info.value.status, info.value.code) == (429, "too_many_failed_authentications")
        assert info.value.headers["retry-after"] == "60"
    assert store.gets == lookups
    # A key seen to succeed still works from there (cache_ttl_s 0: it is looked up again);
    # one never seen from anywhere waits out the lockout; other addresses are not affected.
    assert (await auth.authenticate(f"Bearer {KEY}".encode(), client="10.0.0.1")).key_id == "k1"
    with pytest.raises(GatewayError) as info:
        await auth.authenticate(f"Bearer {KEY}2".encode(), client="10.0.0.1")
    assert info.value.status == 429
    assert (await auth.authenticate(f"Bearer {KEY}2".encode(), client="10.0.0.2")).key_id == "k2"
    now[0] = 61.0  # the window is over
    with pytest.raises(GatewayError) as info:
        await auth.authenticate(f"Bearer {new_key()}".encode(), client="10.0.0.1")
    assert info.value.status == 401


async def test_the_key_cache_evicts_least_recently_used_keys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.accounting.admission._CACHE_MAX", 50)
    cfg = parse_config({**BASE, "teams": [{"name": "t", "keys": [{"id": "k1", "key": KEY}]}]})
    store = CountingStore()
    auth, accounts = authentication(store, cfg.teams, 60)
    await accounts.start(cfg.teams)
    await auth.authenticate(f"Bearer {KEY}".encode())
    for _ in range(500):  # a spray of unknown keys, the valid one in use meanwhile
        with pytest.raises(GatewayError):
            await auth.authenticate(f"Bearer {new_key()}".encode())
        before = store.gets
        await auth.authenticate(f"Bearer {KEY}".encode())
        assert store.gets == before  # still cached: the spray evicted only its own keys
    assert len(auth.cache) == 50


def test_admin_key_strength_is_checked() -> None:
    for weak in ("x" * 40, "0123456789abcdef", "ab" * 20):
        with pytest.raises(ConfigError) as info:
            parse_config({**BASE, "auth": {"admin_key": weak}})
        assert "auth.admin_key: must be at least 32" in info.value.problems[0]
        assert weak not in str(info.value.problems)
    assert parse_config({**BASE, "auth": {"admin_key": new_key()}}).auth.admin_key
