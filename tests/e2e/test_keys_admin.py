"""Keys and the admin API end to end: authentication, model access, key lifecycle across
two workers, admin authorization and validation, the CLI, and keys stored only hashed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import OpenAI

from gateway.cli import main
from selfhost.sim import Simulator, ThreadedSim
from tests.support.accounts import EXACT_MESSAGES, auth, new_key, suffix
from tests.support.procs import Gateway, RedisServer

S = suffix()
ALPHA, BETA = f"alpha-{S}", f"beta-{S}"
ALPHA_KEY, BETA_KEY, ADMIN = new_key(), new_key(), new_key()
ADMIN_HEADERS = auth(ADMIN)
created_keys: list[str] = []  # every plaintext key a test saw, for the leak scan


@pytest.fixture(scope="module")
def gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Gateway]:
    with ThreadedSim(Simulator("instant")) as sim:
        config = {
            "redis": {"url": redis_server.url},
            "auth": {"admin_key": ADMIN, "cache_ttl_s": 60},  # revocation must not wait
            "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
            "models": {m: {"deployments": [{"target": "sim", "model": m}]}
                       for m in ("chat", "other")},
            "teams": [
                {"name": ALPHA, "models": ["chat"], "keys": [{"id": "a1", "key": ALPHA_KEY}]},
                {"name": BETA, "keys": [{"id": "b1", "key": BETA_KEY}]},
            ],
        }
        gw = Gateway(config, tmp_path_factory.mktemp("gw"), workers=2)
        yield gw
        gw.stop()


def sdk(gw: Gateway, key: str) -> OpenAI:
    return OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def chat(gw: Gateway, key: str, model: str = "chat") -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", headers=auth(key),
                      json={"model": model, "messages": EXACT_MESSAGES, "max_tokens": 2})


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{gw.url}/admin/{path}", **kwargs)


def test_missing_or_unknown_key_is_401(gateway: Gateway) -> None:
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "chat"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, new_key()).chat.completions.create(model="chat", messages=EXACT_MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, new_key()).models.list()


def test_models_are_limited_to_the_keys_team(gateway: Gateway) -> None:
    assert [m.id for m in sdk(gateway, ALPHA_KEY).models.list()] == ["chat"]
    assert sorted(m.id for m in sdk(gateway, BETA_KEY).models.list()) == ["chat", "other"]
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk(gateway, ALPHA_KEY).chat.completions.create(model="other", messages=EXACT_MESSAGES)
    assert info.value.code == "model_not_allowed"
    assert chat(gateway, BETA_KEY, "other").status_code == 200


def test_admin_requires_the_admin_key(gateway: Gateway) -> None:
    assert admin(gateway, "GET", "teams").status_code == 401
    for key in (ALPHA_KEY, new_key()):
        r = admin(gateway, "GET", "teams", headers=auth(key))
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    r = admin(gateway, "POST", f"teams/{ALPHA}/keys", headers=auth(BETA_KEY), json={})
    assert r.status_code == 403
    teams = admin(gateway, "GET", "teams", headers=ADMIN_HEADERS).json()["data"]
    assert {ALPHA, BETA} <= {t["name"] for t in teams}


# `param`: the field the error names, where the API names one (None: it does not).
@pytest.mark.parametrize(("method", "path", "body", "param"), [
    ("PUT", "teams/new-team", {"limits": {"rpm": -1}}, None),
    ("PUT", "teams/new-team", {"models": ["no-such-model"]}, "models"),
    ("PUT", "teams/new-team", {"budget": {"usd": 5, "period": "weekly"}}, None),
    ("PUT", "teams/new-team", {"surprise": 1}, None),
    ("PUT", "teams/new-team", b"{not json", None),
    ("PUT", "teams/bad%20name", {}, None),
    ("POST", f"teams/{ALPHA}/keys", {"id": "has space"}, None),
    ("POST", f"teams/{ALPHA}/keys", {"id": ".."}, None),  # a key id that is a path step
    ("POST", f"teams/{ALPHA}/keys", [1, 2], None),
    ("GET", "usage?by=colour", None, "by"),
    ("GET", "usage?from=yesterday", None, "from"),
    ("GET", "events?limit=0", None, "limit"),
    ("PUT", "teams/new-team", {"budget": {"usd": 1e300}}, None),  # was a 500 (OverflowError)
    ("PUT", "teams/%2E%2E", {}, None),  # ".." (a client would resolve it as a path)
    ("GET", "usage?from=2026-13-45", None, "from"),
    ("GET", "events?after=garbage", None, "after"),  # was a 500 (Redis: Invalid stream ID)
])
def test_admin_bad_input_is_400(gateway: Gateway, method: str, path: str, body: Any,
                                param: str | None) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = admin(gateway, method, path, headers=ADMIN_HEADERS, **kwargs)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    assert "Traceback" not in r.text
    assert admin(gateway, "GET", "teams/new-team", headers=ADMIN_HEADERS).status_code == 404
    ids = [k["id"] for k in admin(gateway, "GET", f"teams/{ALPHA}/keys",
                                  headers=ADMIN_HEADERS).json()["data"]]
    assert ".." not in ids and "has space" not in ids


def test_key_lifecycle_and_immediate_revocation(gateway: Gateway) -> None:
    team = f"gamma-{S}"
    r = admin(gateway, "PUT", f"teams/{team}", headers=ADMIN_HEADERS,
              json={"priority": 2, "limits": {"rpm": 100}, "budget": {"usd": 1.5}})
    assert r.status_code == 200
    assert (r.json()["priority"], r.json()["budget"]) == (2, {"usd": 1.5, "period": "monthly"})
    r = admin(gateway, "PUT", f"teams/{team}", headers=ADMIN_HEADERS, json={"priority": 3})
    assert r.json()["limits"] == {"rpm": 100, "tpm": 0}  # fields not given keep their values

    r = admin(gateway, "POST", f"teams/{team}/keys", headers=ADMIN_HEADERS,
              json={"id": "g1", "name": "ci", "limits": {"rpm": 50}})
    assert r.status_code == 201
    key = r.json()["key"]
    created_keys.append(key)
    assert key.startswith("tk-") and len(key) >= 40
    dup = admin(gateway, "POST", f"teams/{team}/keys", headers=ADMIN_HEADERS, json={"id": "g1"})
    assert dup.status_code == 409

    ok = [chat(gateway, key) for _ in range(6)]  # both workers now cache the principal
    assert {r.status_code for r in ok} == {200}
    assert {r.headers["x-ratelimit-limit-requests"] for r in ok} == {"50"}
    listed = admin(gateway, "GET", f"teams/{team}/keys", headers=ADMIN_HEADERS).json()["data"]
    assert [(k["id"], k["name"]) for k in listed] == [("g1", "ci")]
    assert "key" not in listed[0] and "hash" not in listed[0]

    r = admin(gateway, "DELETE", f"teams/{team}/keys/g1", headers=ADMIN_HEADERS)
    assert r.json() == {"id": "g1", "team": team, "revoked": True}
    # Immediate on every worker, though each still caches the principal for 60 s.
    assert [chat(gateway, key).status_code for _ in range(6)] == [401] * 6
    assert admin(gateway, "DELETE", f"teams/{team}/keys/g1",
                 headers=ADMIN_HEADERS).status_code == 404


def test_cli_manages_keys_and_teams(gateway: Gateway, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    common = ["--url", gateway.url, "--admin-key", ADMIN]
    team = f"delta-{S}"
    assert main(["teams", "set", team, "--rpm", "7", "--budget-usd", "2", "--period",
                 "daily", "--models", "chat", *common]) == 0
    shown = capsys.readouterr().out
    assert '"rpm": 7' in shown and '"period": "daily"' in shown
    assert main(["keys", "create", team, "--id", "d1", *common]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    created_keys.append(key)
    assert chat(gateway, key).status_code == 200
    assert main(["keys", "list", team, *common]) == 0
    assert '"id": "d1"' in capsys.readouterr().out
    assert main(["keys", "revoke", team, "d1", *common]) == 0
    capsys.readouterr()
    assert chat(gateway, key).status_code == 401
    assert main(["keys", "revoke", team, "d1", *common]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["teams", "list", "--url", gateway.url, "--admin-key", BETA_KEY]) == 1
    assert "not the admin key" in capsys.readouterr().err


def test_no_plaintext_key_in_redis_logs_or_responses(gateway: Gateway,
                                                     redis_server: RedisServer) -> None:
    secrets = [ALPHA_KEY, BETA_KEY, ADMIN, *created_keys]
    assert len(created_keys) == 2  # the lifecycle and CLI tests ran first and made keys
    chat(gateway, ALPHA_KEY)
    r = redis.Redis.from_url(redis_server.url)
    dump: list[bytes] = []
    for name in r.scan_iter(count=1000):
        kind = r.type(name)
        dump.append(name)
        if kind == b"string":
            dump.append(r.get(name) or b"")
        elif kind == b"hash":
            dump += [b"%s=%s" % kv for kv in r.hgetall(name).items()]
        elif kind == b"set":
            dump += list(r.smembers(name))
        elif kind == b"zset":
            dump += [m for m, _ in r.zrange(name, 0, -1, withscores=True)]
        elif kind == b"stream":
            dump += [v for _, fields in r.xrange(name) for v in fields.values()]
    r.close()
    everything = b"\n".join(dump)
    assert b"turnout:keyhash:" in everything  # the scan did see the key index
    responses = [admin(gateway, "GET", p, headers=ADMIN_HEADERS).text
                 for p in ("teams", f"teams/{ALPHA}/keys", "events?format=jsonl")]
    for secret in secrets:
        assert secret.encode() not in everything
        assert secret not in gateway.logs()
        assert all(secret not in text for text in responses)


def test_guessing_keys_locks_the_address_out(tmp_path: Any) -> None:
    """Brute force is not free: past `auth.lockout.failures` wrong keys from one address,
    it gets 429 for keys never seen to succeed (client and admin keys alike)."""
    with ThreadedSim(Simulator("instant")) as sim:
        gw = Gateway({
            "auth": {"admin_key": ADMIN, "lockout": {"failures": 3, "window_s": 60}},
            "providers": [{"name": "sim", "base_url": sim.url + "/v1"}],
            "models": {"chat": {"deployments": [{"target": "sim", "model": "chat"}]}},
            "teams": [{"name": ALPHA, "keys": [{"id": "a1", "key": ALPHA_KEY}]}]}, tmp_path)
        try:
            assert chat(gw, ALPHA_KEY).status_code == 200  # seen to succeed from here
            assert [chat(gw, new_key()).status_code for _ in range(3)] == [401] * 3
            locked = chat(gw, new_key())
            assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
            assert locked.json()["error"]["code"] == "too_many_failed_authentications"
            assert chat(gw, ALPHA_KEY).status_code == 200  # a known key still works
            wrong_admin = admin(gw, "GET", "teams", headers=auth(new_key()))
            assert wrong_admin.status_code == 429
        finally:
            gw.stop()
