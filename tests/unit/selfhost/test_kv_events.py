"""The KV-event subscriber over real ZeroMQ sockets, against the simulator's publisher
(vLLM's wire format; tests/e2e/test_vllm_kv.py runs it against a real vLLM)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from policies.kv_index import KvIndex
from selfhost.kv_events import Cleared, KvEventsMonitor, KvEventsSpec, Removed, Stored, decode_batch
from selfhost.sim_kv import KvPublisher, encode_batch
from tests.support.polling import until

ROOT = "http://127.0.0.1:1"
RID = "pool/127.0.0.1:1"


def _stored(keys: list[int], size: int = 4) -> dict[str, object]:
    return {"type": "BlockStored", "block_hashes": keys, "parent_block_hash": None,
            "token_ids": list(range(size * len(keys))), "block_size": size, "lora_id": None,
            "medium": "GPU", "lora_name": None}


class Rig:
    def __init__(self, pub: KvPublisher) -> None:
        self.pub = pub
        self.index = KvIndex()
        spec = KvEventsSpec(pub.port, pub.replay_port, heartbeat_s=0.1, timeout_s=0.2)
        self.monitor = KvEventsMonitor("pool", spec, self.index, members=lambda: [ROOT],
                                       replica_id=lambda root: RID, every_s=0.05)

    @property
    def blocks(self) -> set[int | bytes]:
        entry = self.index.get(RID)
        return entry.blocks if entry is not None else set()

    def known(self) -> bool:
        entry = self.index.get(RID)
        return entry is not None and entry.known


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    pub = KvPublisher()
    pub.start()
    r = Rig(pub)
    yield r
    await r.monitor.stop()
    await r.pub.close()


def test_decode_reads_maps_and_arrays_and_skips_other_tiers() -> None:
    payload = msgspec.msgpack.encode([1.5, [
        _stored([1, 2]),
        ["BlockStored", [3], None, [0, 1, 2, 3], 4, None, "GPU"],  # vLLM < 0.11: arrays
        {"type": "BlockStored", "block_hashes": [9], "medium": "CPU", "block_size": 4},
        {"type": "BlockStored", "block_hashes": [8], "medium": "GPU", "group_idx": 1},
        ["BlockRemoved", [1], "GPU"],
        {"type": "AllBlocksCleared"},
        {"type": "SomethingNew"},
    ], 0])
    ts, events = decode_batch(payload)
    assert ts == 1.5
    assert [type(e) for e in events] == [Stored, Stored, Removed, Cleared]
    assert events[1] == Stored([3], 4, [0, 1, 2, 3], None)
    with pytest.raises(ValueError):
        decode_batch(b"\x01")


async def test_catch_up_then_follow(rig: Rig) -> None:
    rig.pub.publish([_stored([1, 2])])  # before anyone subscribed: only the replay has it
    await rig.monitor.start()
    await until(lambda: rig.blocks == {1, 2} and rig.known())
    assert rig.index.get(RID).block_size == 4  # type: ignore[union-attr]
    rig.pub.publish([_stored([3]), {"type": "BlockRemoved", "block_hashes": [1],
                                    "medium": "GPU"}])
    await until(lambda: rig.blocks == {2, 3})
    rig.pub.publish([{"type": "AllBlocksCleared"}])
    await until(lambda: rig.blocks == set())


async def test_a_silent_publisher_makes_the_replica_unknown_then_known_again(rig: Rig) -> None:
    await rig.monitor.start()
    rig.pub.publish([_stored([5])])
    await until(lambda: rig.blocks == {5} and rig.known())
    port, replay = rig.pub.port, rig.pub.replay_port
    await rig.pub.close()
    await until(lambda: not rig.known())
    assert rig.blocks == {5}  # unknown, not forgotten: routing ignores it meanwhile
    # The replica comes back (restarted: numbering from 0, an empty cache, new events).
    rig.pub = KvPublisher(port=port, replay_port=replay)
    rig.pub.start()
    rig.pub.publish([_stored([7])])
    await until(lambda: rig.known() and rig.blocks == {7})


async def test_a_gap_is_filled_from_the_replay(rig: Rig) -> None:
    await rig.monitor.start()
    await until(rig.known)
    # Batch 0 reaches only the replay buffer (as if the PUB message were dropped).
    rig.pub._buffer.append((0, encode_batch([_stored([10])])))
    rig.pub._seq = 1
    rig.pub.publish([_stored([11])])
    await until(lambda: rig.blocks == {10, 11})


async def test_members_that_leave_are_forgotten(rig: Rig) -> None:
    members = [ROOT]
    spec = KvEventsSpec(rig.pub.port, rig.pub.replay_port, heartbeat_s=0.1, timeout_s=0.2)
    await rig.monitor.stop()
    rig.monitor = KvEventsMonitor("pool", spec, rig.index, members=lambda: list(members),
                                  replica_id=lambda root: RID, every_s=0.05)
    await rig.monitor.start()
    rig.pub.publish([_stored([1])])
    await until(lambda: rig.blocks == {1})
    members.clear()
    await until(lambda: rig.index.get(RID) is None)
