"""Store key names, in one place for both stores.

Everything about a team lives under `turnout:{team}:…`: the braces are a Redis Cluster
hash tag, so a team's records, limiters, budget, reservations, rollups and event stream
share one slot and one Lua script can update them atomically. Only the two indexes that
must be found before the team is known are global: the key-hash → (team, key id) index
used by authentication, and the set of team names.
"""

from __future__ import annotations

TEAMS = "turnout:teams"  # SET of team names


def key_index(key_hash: str) -> str:
    return f"turnout:keyhash:{key_hash}"  # → b"team\nkey_id"


def team(name: str) -> str:
    return f"turnout:{{{name}}}:team"  # JSON TeamPolicy


def keys(name: str) -> str:
    return f"turnout:{{{name}}}:keys"  # HASH key id → JSON KeyRecord


def revoked(name: str) -> str:
    # HASH key hash → when (s): keys revoked through the admin API, so that self-healing
    # (accounting/accounts.py) does not put back a config key revoked on purpose
    return f"turnout:{{{name}}}:revoked"


def limiters(name: str) -> str:
    # HASH: GCRA TATs, field `limiter(key_id, kind)`; one hash, so a script reads and
    # writes all of a request's limiters in one call each (a TAT in the past = none)
    return f"turnout:{{{name}}}:limits"


def limiter(key_id: str | None, kind: str) -> str:
    """The limiters field for `kind` (rpm | tpm) of a key, or of the whole team (None)."""
    return f"k:{key_id}:{kind}" if key_id is not None else f"team:{kind}"


def budget(name: str) -> str:
    # HASH: period, spent, reserved, k:<id>:{period,spent,reserved}, r:<reservation id>
    return f"turnout:{{{name}}}:budget"


def reservations(name: str) -> str:
    return f"turnout:{{{name}}}:resv"  # ZSET reservation id → expiry (ms)


def settled(name: str) -> str:
    # ZSET settlement id → when (ms): settlements applied, remembered for a while so that
    # one sent again is not applied twice
    return f"turnout:{{{name}}}:settled"


def rollup(name: str) -> str:
    return f"turnout:{{{name}}}:rollup"  # HASH "<day>|<model>|<metric>" → integer


def events(name: str) -> str:
    return f"turnout:{{{name}}}:events"  # STREAM, field `e` = JSON usage event


def cache_entry(namespace: str, digest: str) -> str:
    """A response-cache entry. The hash tag is the digest (which covers the namespace):
    entries spread over the cluster, and an entry and its lock share a slot."""
    return f"turnout:cache:{namespace}:{{{digest}}}"


def cache_lock(entry_key: str) -> str:
    return entry_key + ":lock"  # the coalescing lock: held by the one request filling it
