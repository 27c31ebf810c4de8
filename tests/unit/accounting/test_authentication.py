"""Teams and keys in the config: validation, and what a key authenticates as."""

from __future__ import annotations

import pytest

from gateway.accounting.accounts import Accounts, declared_principals, team_policy
from gateway.accounting.admission import Authenticator, bearer
from gateway.accounting.invalidation import LocalInvalidations
from gateway.config import ConfigError, parse_config
from gateway.errors import GatewayError
from gateway.store import MemoryStore
from policies.keys import Principal, hash_key, new_key

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
    for expected in ("auth.admin_key: must be at least 16", "teams.2.name:",
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
    authenticator = Authenticator(store, required=True, admin_key=None, cache_ttl_s=5,
                                  declared=declared_principals(cfg.teams))
    accounts = Accounts(store, LocalInvalidations([authenticator]))
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
