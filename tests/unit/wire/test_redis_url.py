"""`redis.url` forms beyond one node: a cluster's seed nodes, and Sentinel
(`redis+sentinel://`), as the store parses them and as `check-config` checks them (the
errors never quote the URL: it may hold a password)."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.wire.redis_url import SENTINEL_PORT, SentinelTarget, parse_target, parse_url

PASSWORD = "s3cret-pw-9f2c"


def config(url: str) -> dict[str, object]:
    return {"redis": {"url": url},
            "providers": [{"name": "p", "base_url": "http://127.0.0.1:1/v1"}],
            "models": {"m": {"deployments": [{"target": "p", "model": "x"}]}}}


def test_sentinel_urls() -> None:
    t = parse_target(f"redis+sentinel://app:{PASSWORD}@s1:26380,S2,[::1]:26381/mymaster/2"
                     "?sentinel_password=watch")
    assert isinstance(t, SentinelTarget)
    assert [(s.host, s.port) for s in t.sentinels] == [("s1", 26380), ("s2", SENTINEL_PORT),
                                                      ("::1", 26381)]
    assert t.service == "mymaster"
    assert (t.master.db, t.master.username, t.master.password, t.master.tls) == \
        (2, "app", PASSWORD, None)
    assert {(s.username, s.password) for s in t.sentinels} == {(None, "watch")}
    assert PASSWORD not in repr(t)
    tls = parse_target("rediss+sentinel://s1/svc?ssl_cert_reqs=none")
    assert isinstance(tls, SentinelTarget) and tls.master.db == 0
    assert tls.master.tls is not None and tls.sentinels[0].tls is tls.master.tls
    db = parse_target("redis+sentinel://s1/svc/1?db=3")
    assert isinstance(db, SentinelTarget) and db.master.db == 3  # options win, as redis-py


def test_several_hosts_are_a_clusters_seeds() -> None:
    seeds = parse_target(f"redis://:{PASSWORD}@n1:7000,n2:7001,n3/0")
    assert isinstance(seeds, tuple)
    assert [(s.host, s.port, s.password) for s in seeds] == [
        ("n1", 7000, PASSWORD), ("n2", 7001, PASSWORD), ("n3", 6379, PASSWORD)]
    with pytest.raises(ValueError, match="more than one server"):
        parse_url("redis://n1,n2")


@pytest.mark.parametrize(("url", "problem"), [
    (f"redis+sentinel://:{PASSWORD}@s1:26379", "service name"),
    (f"redis+sentinel://:{PASSWORD}@s1/svc/0/extra", "service_name[/db]"),
    (f"redis+sentinel://:{PASSWORD}@s1/svc/x", "must be a number"),
    (f"redis+sentinel://:{PASSWORD}@s1:port/svc", "cannot parse it"),
    (f"redis://:{PASSWORD}@n1:7000,:7001/0", "cannot parse it"),
    (f"redis://:{PASSWORD}@n1/0?sentinel_password=x", "unsupported options"),
    (f"redis://:{PASSWORD}@n1/0/1", "database number"),
    (f"sentinel://:{PASSWORD}@s1/svc", "redis+sentinel://"),
    (f"rediss://:{PASSWORD}@n1/0?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs"),
])
def test_check_config_names_the_problem_without_the_url(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(url))
    (line,) = info.value.problems
    assert line.startswith("redis.url: ") and problem in line
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("url", [
    "redis+sentinel://s1:26379,s2:26379,s3:26379/mymaster",
    "rediss+sentinel://user:pw@s1/mymaster/0?ssl_cert_reqs=none",
    "redis://n1:7000,n2:7000,n3:7000",
    "rediss://clustercfg.example.cache.amazonaws.com:6379",
])
def test_check_config_accepts(url: str) -> None:
    assert parse_config(config(url)).redis is not None
