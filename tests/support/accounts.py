"""Helpers for tests of keys, limits, budgets and metering against a running gateway."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from gateway.accounting.accounts import Accounts, declared_principals
from gateway.accounting.admission import Authenticator, PrincipalCache
from gateway.accounting.invalidation import Listener, LocalInvalidations
from gateway.config.accounts import TeamConfig
from gateway.store import Store

# One message of one 4-character word: the gateway's chars/4 estimate (1 + 4 per message)
# equals the simulator's count (1 word + 4 per message), so reservations settle unchanged.
EXACT_MESSAGES = [{"role": "user", "content": "abcd"}]
EXACT_PROMPT_TOKENS = 5


def new_key() -> str:
    return "tk-test-" + os.urandom(16).hex()


def suffix() -> str:
    """Team names unique to a test module: the session's Redis is shared."""
    return os.urandom(3).hex()


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def burst(url: str, key: str, count: int, **body: Any) -> list[httpx.Response]:
    """`count` concurrent chat requests; every one gets an answer (no client-side limit)."""
    payload = {"model": "priced", "messages": EXACT_MESSAGES, "max_tokens": 5, **body}
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        return list(await asyncio.gather(*(
            client.post("/v1/chat/completions", json=payload, headers=auth(key))
            for _ in range(count))))


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll until `check()` is truthy (background settlement landing), else fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, "condition not reached in time"
            return value
        time.sleep(0.05)


def authentication(store: Store, teams: list[TeamConfig], cache_ttl_s: float,
                   extra_listeners: Sequence[Listener] = (), **kwargs: Any
                   ) -> tuple[Authenticator, Accounts]:
    """Authentication composed as the services compose it, for one process (no Redis
    invalidations): the principal cache hears changes, accounts heal what the store lost.
    `kwargs`: more for the Authenticator (lockout)."""
    cache = PrincipalCache(cache_ttl_s)
    accounts = Accounts(store, LocalInvalidations([cache, *extra_listeners]))
    auth = Authenticator(store, cache, required=True, admin_key=None,
                         declared=declared_principals(teams), restore=accounts.restore,
                         **kwargs)
    return auth, accounts
