"""The response cache: exact-match answers in the store, replayed in the form the client
asks for, with concurrent identical misses coalesced into one upstream call.

- `policy`: which requests are cached and how (config per model and team, per-request
  Cache-Control and x-turnout-cache-ttl);
- `request_key`: the cache key, a hash of the normalized request, namespaced per team;
- `entry`: the stored form; `assemble`: a streamed answer assembled while it streams;
- `hit_stream`: an entry replayed as a stream of canonical chunks;
- `coalesce`: one upstream call per key across processes (lock, polling, takeover);
- `service`: `ResponseCache`, what the pipeline calls.
"""

from gateway.cache.service import (
    BYPASS,
    HIT,
    MISS,
    CacheCounters,
    CacheStage,
    CacheTicket,
    ResponseCache,
)

__all__ = ["BYPASS", "HIT", "MISS", "CacheCounters", "CacheStage", "CacheTicket",
           "ResponseCache"]
