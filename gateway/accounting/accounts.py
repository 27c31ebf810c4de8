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

**Self-healing.** Redis may lose what the config wrote at startup: flushed, restarted
without persistence, failed over to a replica that never had it. Every process puts back
what the config declares when it finds it missing, without a restart: when a lookup of a
declared key finds nothing (at once, and that very lookup then finds it), and every
`_PROBE_S` (the declared teams' records, their keys' records and the team index, all
read in one pipelined round trip). Only what is missing is written, and only that is
announced; limiters, budgets, reservations, rollups and events are left as Redis has them
(a budget continues from the spend Redis still holds). A config key revoked through the
admin API is not put back (its hash is kept in the team's `revoked` hash); a restart
still applies the config as it stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

import orjson

from gateway.accounting.invalidation import Announcer, Change
from gateway.config.accounts import KeyConfig, TeamConfig
from gateway.store import Store, StoreUnavailable, layout
from policies.budgets import Budget
from policies.keys import KeyRecord, Principal, TeamPolicy, hash_key, new_key
from policies.ratelimits import Limits

log = logging.getLogger("turnout.accounts")

_PROBE_S = 2.0  # how often the declared teams and keys are checked for
_HEAL_GAP_S = 1.0  # a team is put back at most this often from lookups


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
        self._watcher: asyncio.Task[None] | None = None
        self._declared: dict[str, TeamConfig] = {}  # team name → its config
        self._teams_of: dict[str, str] = {}  # declared key hash → its team
        self._healing: dict[str, asyncio.Task[bool]] = {}  # team → its healing under way
        self._healed_at: dict[str, float] = {}
        self.healed = 0  # teams put back since start (found missing)

    async def start(self, teams: list[TeamConfig]) -> None:
        self._declared = {t.name: t for t in teams}
        self._teams_of = {hash_key(k.key): t.name for t in teams for k in t.keys}
        seeded = True
        try:
            await self.seed(teams)
        except StoreUnavailable:
            log.warning("store unavailable: config teams and keys will be applied when it is back")
            seeded = False
        # A store in memory loses nothing while the process lives: nothing to watch.
        if teams and (self.store.name != "memory" or not seeded):
            self._watcher = asyncio.get_running_loop().create_task(self._watch(seeded))

    async def _watch(self, seeded: bool) -> None:
        """Apply the config once the store is back (if it was down at start), then check
        every `_PROBE_S` that what it declares is still there."""
        while True:
            await asyncio.sleep(1.0 if not seeded else _PROBE_S)
            with contextlib.suppress(StoreUnavailable):
                if not seeded:
                    await self.seed(list(self._declared.values()))
                    seeded = True
                    continue
                for name in await self._missing():
                    await self._heal(name, "found missing")

    async def stop(self) -> None:
        for task in (self._watcher, *self._healing.values()):
            if task is not None:
                task.cancel()

    # -- self-healing ----------------------------------------------------------------------

    async def restore(self, digest: str) -> bool:
        """A lookup found no key with hash `digest`: if the config declares it (and the
        admin API did not revoke it), put its team and keys back. Whether anything was
        done (look it up again). At most once per `_HEAL_GAP_S` a team, concurrent
        lookups sharing one attempt."""
        name = self._teams_of.get(digest)
        if name is None:
            return False
        task = self._healing.get(name)
        if task is None:
            if time.monotonic() - self._healed_at.get(name, -_HEAL_GAP_S) < _HEAL_GAP_S:
                return False
            task = self._healing[name] = asyncio.get_running_loop().create_task(
                self._heal(name, "a declared key's lookup found nothing"))
            task.add_done_callback(lambda _: self._healing.pop(name, None))
        return await asyncio.shield(task)

    async def _heal(self, name: str, why: str) -> bool:
        self._healed_at[name] = time.monotonic()
        if await self.seed([self._declared[name]], healing=True):
            self.healed += 1
            log.warning("team %s: put back what the config declares (%s: the store lost"
                        " it); its budget and limits continue from what the store holds",
                        name, why)
            return True
        return False

    async def _missing(self) -> list[str]:
        """Declared teams with a record missing: the team's, a key's (unless revoked
        through the admin API), a key's index entry, or the team in the index of teams.
        One pipelined round trip."""
        teams = list(self._declared.values())
        keys = [(t.name, k) for t in teams for k in t.keys]
        names, policies, *found = await asyncio.gather(
            self.store.smembers(layout.TEAMS),
            asyncio.gather(*(self.store.get(layout.team(t.name)) for t in teams)),
            asyncio.gather(*(self.store.hget(layout.keys(team), k.id) for team, k in keys)),
            asyncio.gather(*(self.store.get(layout.key_index(hash_key(k.key)))
                             for _, k in keys)),
            asyncio.gather(*(self.store.hget(layout.revoked(team), hash_key(k.key))
                             for team, k in keys)))
        records, indexed, revoked = found
        missing = {t.name for t, policy in zip(teams, policies, strict=True)
                   if policy is None or t.name not in names}
        missing |= {team for (team, _), record, index, gone in zip(
            keys, records, indexed, revoked, strict=True)
            if (record is None or index is None) and gone is None}
        return sorted(missing)

    # -- management (admin API, startup) ---------------------------------------------------

    async def seed(self, teams: list[TeamConfig], *, healing: bool = False) -> bool:
        """Apply the config's teams and keys: the config is authoritative for what it
        declares. Only what differs from the store is written (and announced): a restart
        with the same config leaves every process's caches and leases alone. `healing`:
        only what is missing, and not keys revoked through the admin API. Whether
        anything was written."""
        wrote = False
        listed = await self.store.smembers(layout.TEAMS)
        for team in teams:
            policy = team_policy(team)
            stored = await self.get_team(team.name)
            if stored is None or (stored != policy and not healing):
                await self.put_team(policy, wait=False)  # (lists it too)
                wrote = True
            elif team.name not in listed:
                await self.store.sadd(layout.TEAMS, team.name)
                wrote = True
            for k in team.keys:
                record = _key_record(team.name, k)
                if healing and await self.store.hget(layout.revoked(team.name), record.hash):
                    continue
                if not await self._stored(record):
                    await self._put_key(record)
                    wrote = True
        return wrote

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
        # Remembered, so that a config key revoked here is not put back by self-healing.
        await self.store.hset(layout.revoked(team), record.hash, b"%d" % time.time())
        await self._changed(Change(team, key_id, record.hash), wait=True)
        log.info("revoked key %s of team %s", key_id, team)
        return True

    async def _changed(self, change: Change, *, wait: bool) -> None:
        await self._invalidations.announce(change, wait=wait)
