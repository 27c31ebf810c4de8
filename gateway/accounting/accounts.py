"""Teams and keys in the store: the config's written at startup, the admin API's changes.
(Reading them on the hot path, cached, is authentication: `admission.py`.)

A key is found through the global index `turnout:keyhash:<sha256>` (it holds the key's
record); its team's policy is in the team's slot.

Revocation deletes the key's record from its team's `keys` hash and the index. It takes
effect at once everywhere: admission in the store refuses a key whose record is gone,
whatever the caches hold, and with Redis the change is announced to every process
(`invalidation.py`), which drops its cached principal and the key's leases before
the revocation returns. Policy changes (limits, budget, models, priority) are announced
the same way; without Redis there is one process, which forgets them itself
(`LocalInvalidations`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

import orjson

from gateway.accounting.invalidation import Announcer, Change
from gateway.config import KeyConfig, TeamConfig
from gateway.store import Store, StoreUnavailable, layout
from policies.budgets import Budget
from policies.keys import KeyRecord, Principal, TeamPolicy, hash_key, new_key
from policies.ratelimits import Limits

log = logging.getLogger("turnout.accounts")


def team_policy(team: TeamConfig) -> TeamPolicy:
    return TeamPolicy.from_dict(team.model_dump(exclude={"keys"}))


def _key_record(team: str, k: KeyConfig) -> KeyRecord:
    return KeyRecord(id=k.id, team=team, hash=hash_key(k.key), created=time.time(),
                     name=k.name, limits=Limits(**k.limits.model_dump()) if k.limits else None,
                     budget=Budget.from_dict(k.budget.model_dump() if k.budget else None))


async def lookup_principal(store: Store, digest: str) -> Principal | None:
    """The principal of the key whose hash is `digest`, from the store (None: no such key,
    or its team is gone)."""
    raw = await store.get(layout.key_index(digest))
    if raw is None:
        return None
    record = KeyRecord.from_dict(orjson.loads(raw))
    team = await get_team(store, record.team)
    return Principal.of(team, record) if team is not None else None


async def get_team(store: Store, name: str) -> TeamPolicy | None:
    raw = await store.get(layout.team(name))
    return TeamPolicy.from_dict(orjson.loads(raw)) if raw is not None else None


def declared_principals(teams: list[TeamConfig]) -> dict[str, Principal]:
    """The config's keys by hash: they still authenticate while the store is down."""
    return {hash_key(k.key): Principal.of(team_policy(t), _key_record(t.name, k))
            for t in teams for k in t.keys}


class Accounts:
    def __init__(self, store: Store, invalidations: Announcer) -> None:
        self.store = store
        self._invalidations = invalidations  # every process forgets what changed
        self._seeder: asyncio.Task[None] | None = None

    async def start(self, teams: list[TeamConfig]) -> None:
        try:
            await self.seed(teams)
        except StoreUnavailable:
            log.warning("store unavailable: config teams and keys will be applied when it is back")
            self._seeder = asyncio.get_running_loop().create_task(self._seed_later(teams))

    async def _seed_later(self, teams: list[TeamConfig]) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(StoreUnavailable):
                await self.seed(teams)
                return

    async def stop(self) -> None:
        if self._seeder is not None:
            self._seeder.cancel()

    # -- management (admin API, startup) ---------------------------------------------------

    async def seed(self, teams: list[TeamConfig]) -> None:
        """Apply the config's teams and keys: the config is authoritative for what it
        declares. Only what differs from the store is written (and announced): a restart
        with the same config leaves every process's caches and leases alone."""
        for team in teams:
            policy = team_policy(team)
            if await self.get_team(team.name) != policy:
                await self.put_team(policy, wait=False)
            await self.store.sadd(layout.TEAMS, team.name)
            for k in team.keys:
                record = _key_record(team.name, k)
                if not await self._stored(record):
                    await self._put_key(record)

    async def _stored(self, record: KeyRecord) -> bool:
        """Whether this key is in the store as it is (its creation time aside)."""
        raw = await self.store.hget(layout.keys(record.team), record.id)
        if raw is None or await self.store.get(layout.key_index(record.hash)) is None:
            return False
        return replace(KeyRecord.from_dict(orjson.loads(raw)), created=record.created) == record

    async def put_team(self, policy: TeamPolicy, *, wait: bool = True) -> None:
        """Create or change a team; `wait`: until every process has forgotten the old."""
        await self.store.set(layout.team(policy.name), orjson.dumps(policy.to_dict()))
        await self.store.sadd(layout.TEAMS, policy.name)
        await self._changed(Change(policy.name), wait=wait)

    async def get_team(self, name: str) -> TeamPolicy | None:
        return await get_team(self.store, name)

    async def team_names(self) -> list[str]:
        return sorted(await self.store.smembers(layout.TEAMS))

    async def create_key(self, team: str, key_id: str, name: str = "",
                         limits: Limits | None = None, budget: Budget | None = None
                         ) -> tuple[KeyRecord, str]:
        """A new key: the record, and the secret (returned this once, never stored)."""
        secret = new_key()
        record = KeyRecord(id=key_id, team=team, hash=hash_key(secret), created=time.time(),
                           name=name, limits=limits, budget=budget)
        await self._put_key(record)
        return record, secret

    async def _put_key(self, record: KeyRecord) -> None:
        raw = orjson.dumps(record.to_dict())
        # Record first, index last: a crash in between leaves a key that cannot authenticate.
        await self.store.hset(layout.keys(record.team), record.id, raw)
        await self.store.set(layout.key_index(record.hash), raw)
        await self._changed(Change(record.team, record.id, record.hash), wait=False)

    async def keys(self, team: str) -> list[KeyRecord]:
        raw = await self.store.hgetall(layout.keys(team))
        return sorted((KeyRecord.from_dict(orjson.loads(v)) for v in raw.values()),
                      key=lambda r: r.created)

    async def revoke_key(self, team: str, key_id: str) -> bool:
        raw = await self.store.hget(layout.keys(team), key_id)
        if raw is None:
            return False
        record = KeyRecord.from_dict(orjson.loads(raw))
        # Record first: from this moment admission refuses the key on every replica.
        await self.store.hdel(layout.keys(team), key_id)
        await self.store.delete(layout.key_index(record.hash))
        await self._changed(Change(team, key_id, record.hash), wait=True)
        log.info("revoked key %s of team %s", key_id, team)
        return True

    async def _changed(self, change: Change, *, wait: bool) -> None:
        await self._invalidations.announce(change, wait=wait)
