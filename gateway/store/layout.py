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


# The batch lane (gateway/batch): files and batches of a team under its hash tag, so one
# script updates a batch's record, its line queue, its results and the team's ledger.

BATCHES_ACTIVE = "turnout:batch:active"  # ZSET "<team>\n<batch id>" → created (ms): to run


def files(name: str) -> str:
    return f"turnout:{{{name}}}:files"  # HASH file id → JSON file record


def batches(name: str) -> str:
    return f"turnout:{{{name}}}:batches"  # ZSET batch id → created (ms), for listing


def batch(name: str, batch_id: str) -> str:
    # HASH: status, total, next (lines [next, total) never taken), completed, failed,
    # usage counters, timestamps, claim (ms: a lane validating or finalizing it)
    return f"turnout:{{{name}}}:batch:{batch_id}"


def batch_running(name: str, batch_id: str) -> str:
    return batch(name, batch_id) + ":running"  # ZSET line index → lease expiry (ms)


def batch_requeued(name: str, batch_id: str) -> str:
    return batch(name, batch_id) + ":requeued"  # LIST line indexes given back, to redo


def batch_results(name: str, batch_id: str) -> str:
    return batch(name, batch_id) + ":results"  # HASH custom_id → "<index> <0|1> <line>"


def response(team: str, response_id: str) -> str:
    """A stored response of the Responses API (JSON: the response and its conversation's
    input items), expiring after `responses.store_ttl_s`; under the team's hash tag."""
    return f"turnout:{{{team}}}:response:{response_id}"


# The console (gateway/console): a few global keys, none per team.
CONSOLE_SNAPSHOTS = "turnout:console:snapshots"  # HASH process id → its latest snapshot
CONSOLE_WATCHING = "turnout:console:watching"  # present (short TTL) while a console is open


def console_session(digest: str) -> str:
    """A console login: JSON, expiring with it; `digest`: the SHA-256 of the cookie's
    session id (the store never holds a usable cookie)."""
    return f"turnout:console:session:{digest}"
