"""What each vLLM replica holds in its prefix cache, as its KV events tell: replica →
cached block keys. Written by the KV-event subscriber (`selfhost/kv_events.py`) or, in
the routing simulation, by the simulated replicas; read by the `kv-aware` routing step.

A replica is *known* while its events are followed: from its first answer (a replay, or
a batch) until they stop (no answer to the subscriber's periodic replay request, or a
gap that cannot be replayed). An unknown replica is not taken for empty: routing does not
score it on cache contents at all (`routing/kv_aware.py`).

Besides what the replica said, the index holds *speculative* blocks: the blocks of a
request just routed to it, for `SPECULATIVE_TTL_S`, so the requests of a burst that share
a prefix follow the first one instead of scattering before its events arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.canonical import CanonicalRequest, Deployment

Key = int | bytes
SPECULATIVE_TTL_S = 2.0  # about a prefill under load: by then the real events are in


@dataclass(slots=True)
class ReplicaBlocks:
    blocks: set[Key] = field(default_factory=set)
    block_size: int | None = None  # as its events report it
    known: bool = False
    speculative: dict[Key, float] = field(default_factory=dict)  # key → expiry
    stored_total: int = 0  # counters, for tests and debugging
    removed_total: int = 0
    cleared_total: int = 0

    def holds(self, key: Key, now: float) -> bool:
        if key in self.blocks:
            return True
        expiry = self.speculative.get(key)
        return expiry is not None and expiry > now


class KvIndex:
    """Replica id (the deployment id, `pool/host:port`) → its cached blocks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._replicas: dict[str, ReplicaBlocks] = {}

    def replica(self, replica_id: str) -> ReplicaBlocks:
        r = self._replicas.get(replica_id)
        if r is None:
            r = self._replicas[replica_id] = ReplicaBlocks()
        return r

    def get(self, replica_id: str) -> ReplicaBlocks | None:
        return self._replicas.get(replica_id)

    def forget(self, replica_id: str) -> None:
        """A replica left the pool."""
        self._replicas.pop(replica_id, None)

    # -- what the events say ----------------------------------------------------------------

    def stored(self, replica_id: str, keys: Iterable[Key], block_size: int | None) -> None:
        r = self.replica(replica_id)
        for key in keys:
            r.blocks.add(key)
            r.speculative.pop(key, None)
            r.stored_total += 1
        if block_size:
            r.block_size = block_size

    def removed(self, replica_id: str, keys: Iterable[Key]) -> None:
        r = self.replica(replica_id)
        for key in keys:
            r.blocks.discard(key)
            r.removed_total += 1

    def cleared(self, replica_id: str) -> None:
        r = self.replica(replica_id)
        r.blocks.clear()
        r.speculative.clear()
        r.cleared_total += 1

    def set_known(self, replica_id: str, known: bool) -> None:
        r = self.replica(replica_id) if known else self._replicas.get(replica_id)
        if r is not None:
            r.known = known

    # -- what routing asks ------------------------------------------------------------------

    def matched(self, replica_id: str, keys: Sequence[Key]) -> int | None:
        """How many of `keys` (a request's blocks, in order) the replica holds as a
        prefix; None when the replica's contents are unknown."""
        r = self._replicas.get(replica_id)
        if r is None or not r.known:
            return None
        now = self.clock()
        n = 0
        for key in keys:
            if not r.holds(key, now):
                break
            n += 1
        return n

    def speculate(self, replica_id: str, keys: Sequence[Key]) -> None:
        """The request with these blocks was just routed to the replica: count them as
        cached there until its own events say what it kept."""
        r = self._replicas.get(replica_id)
        if r is None or not r.known:
            return
        expiry = self.clock() + SPECULATIVE_TTL_S
        spec = r.speculative
        for key in keys:
            if key not in r.blocks:
                spec[key] = expiry
        if len(spec) > 4 * len(keys) + 1024:  # now and then, drop the expired
            now = expiry - SPECULATIVE_TTL_S
            for key in [k for k, t in spec.items() if t <= now]:
                del spec[key]


class BlockKeyer(Protocol):
    """A request's block keys for one replica's block size (tokenized with the model's
    chat template, hashed as vLLM does: `selfhost/kv_keys.py`); None when they cannot be
    computed (no tokenizer, content we cannot tokenize as vLLM would)."""

    def keys(self, req: CanonicalRequest, dep: Deployment, block_size: int
             ) -> Sequence[Key] | None: ...


@dataclass(slots=True)
class KvView:
    """What the kv-aware step reads: the index, and how to key a request for each pool
    (pools without KV events have no keyer)."""

    index: KvIndex
    keyers: dict[str, BlockKeyer] = field(default_factory=dict)  # pool name → keyer

    def keyer(self, dep: Deployment) -> BlockKeyer | None:
        return self.keyers.get(dep.pool) if dep.pool is not None else None

