from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import Gateway, RedisCluster, RedisServer
from tests.support.stores import REDIS_KINDS, redis_url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 masters and 3 replicas, shared like `redis_server` (tests that
    fail nodes over start their own)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module", params=REDIS_KINDS)
def redis_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(kind, url): a module's tests run on one redis-server, then on a Redis Cluster."""
    return request.param, redis_url(request, request.param)


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start `turnout serve` subprocesses: `gateway_factory(config_dict, workers=1, env=None)`.

    Every gateway started is stopped at the end of the test.
    """
    started: list[Gateway] = []

    def start(config: dict[str, Any], **kwargs: Any) -> Gateway:
        gw = Gateway(config, tmp_path, **kwargs)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
