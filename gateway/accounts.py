"""Teams and keys in the store, and authentication: bearer key → `Principal`.

A key is found through the global index `turnout:keyhash:<sha256>` (it holds the key's
record); its team's policy is in the team's slot. Both lookups are cached in-process for
`auth.cache_ttl_s`, so the hot path does no store round trip for authentication.

Revocation deletes the key's record from its team's `keys` hash and the index. It takes
effect at once everywhere: admission in the store refuses a key whose record is gone,
whatever the caches hold, and with Redis the change is announced to every process
(gateway/invalidation.py), which drops its cached principal and the key's leases before
the revocation returns. Policy changes (limits, budget, models, priority) are announced
the same way; without Redis there is one process, which forgets them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import replace

import orjson

from gateway.config import KeyConfig, TeamConfig
from gateway.errors import GatewayError
from gateway.invalidation import Change, Invalidations
from gateway.store import Store, StoreUnavailable, layout
from policies.budgets import Budget
from policies.keys import ANONYMOUS, KeyRecord, Principal, TeamPolicy, hash_key, new_key
from policies.ratelimits import Limits

log = logging.getLogger("turnout.accounts")

_CACHE_MAX = 10_000  # random keys sprayed at us must not grow the cache without bound


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key")


def bearer(authorization: bytes | None) -> str | None:
    if authorization is None or authorization[:7].lower() != b"bearer ":
        return None
    return authorization[7:].strip().decode("latin-1") or None


def team_policy(team: TeamConfig) -> TeamPolicy:
    return TeamPolicy.from_dict(team.model_dump(exclude={"keys"}))


def _key_record(team: str, k: KeyConfig) -> KeyRecord:
    return KeyRecord(id=k.id, team=team, hash=hash_key(k.key), created=time.time(),
                     name=k.name, limits=Limits(**k.limits.model_dump()) if k.limits else None,
                     budget=Budget.from_dict(k.budget.model_dump() if k.budget else None))


class Accounts:
    def __init__(self, store: Store, *, required: bool, admin_key: str | None,
                 cache_ttl_s: float) -> None:
        self.store = store
        self.required = required
        self._admin = hash_key(admin_key) if admin_key else None
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        # Config-declared keys still authenticate while the store is down (fail-open).
        self._declared: dict[str, Principal] = {}
        self._seeder: asyncio.Task[None] | None = None
        self.invalidations: Invalidations | None = None  # with Redis: tells every process
        self._generation = 0  # bumped by every forget: a lookup begun before is not cached

    async def start(self, teams: list[TeamConfig]) -> None:
        records = [(team_policy(t), _key_record(t.name, k)) for t in teams for k in t.keys]
        self._declared = {r.hash: Principal.of(p, r) for p, r in records}
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

    # -- authentication (hot path) ---------------------------------------------------------

    async def authenticate(self, authorization: bytes | None,
                           api_key: bytes | None = None) -> Principal:
        """From `Authorization: Bearer KEY`, or a surface's own header (Anthropic's
        `x-api-key`) passed as `api_key`."""
        if not self.required:
            return ANONYMOUS
        key = bearer(authorization) or (api_key.decode("latin-1").strip() if api_key else None)
        if not key:
            raise unauthorized("You didn't provide an API key: send `Authorization: Bearer KEY`.")
        digest = hash_key(key)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is None or hit[0] <= now:
            generation = self._generation
            try:
                principal = await self._lookup(digest)
            except StoreUnavailable as err:
                log.warning("key lookup: %s", err)
                # A stale entry beats refusing: admission then applies the outage policy.
                known = hit[1] if hit is not None else self._declared.get(digest)
                if known is not None:
                    return known
                raise GatewayError(503, "the key store is unavailable; try again shortly",
                                   type="server_error", code="store_unavailable") from None
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            if generation == self._generation:  # else a change it may predate came since
                self._cache[digest] = (now + self._ttl, principal)
        else:
            principal = hit[1]
        if principal is None:
            raise unauthorized("Incorrect API key provided.")
        return principal

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    def is_admin(self, authorization: bytes | None) -> bool:
        key = bearer(authorization)
        return bool(self._admin and key and hmac.compare_digest(self._admin, hash_key(key)))

    async def _lookup(self, digest: str) -> Principal | None:
        raw = await self.store.get(layout.key_index(digest))
        if raw is None:
            return None
        record = KeyRecord.from_dict(orjson.loads(raw))
        team = await self.get_team(record.team)
        return Principal.of(team, record) if team is not None else None

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
        raw = await self.store.get(layout.team(name))
        return TeamPolicy.from_dict(orjson.loads(raw)) if raw is not None else None

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
        if self.invalidations is None:
            self.forget(change)
        else:
            await self.invalidations.announce(change, wait=wait)

    def forget_all(self) -> None:
        self._generation += 1
        self._cache.clear()

    def forget(self, change: Change) -> None:
        """Drop this process's cached principals of a changed team or key."""
        self._generation += 1
        if change.key_hash is not None:
            self._cache.pop(change.key_hash, None)
        for digest, (_, p) in list(self._cache.items()):
            if p is not None and p.team == change.team and change.key_id in (None, p.key_id):
                del self._cache[digest]
