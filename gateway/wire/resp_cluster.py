"""Redis Cluster over our RESP client: one `RespClient` (one pipelined connection) per
master, each command sent to the master of its key's slot.

- **Slots.** A key's slot is CRC16 (XMODEM, as `binascii.crc_hqx`) of its hash tag (the
  part in the first non-empty `{…}`) or of the whole key, mod 16384. A script's keys must
  share one slot (the store's layout puts a team's keys under `{team}`, a cache entry and
  its lock under `{digest}`): keys that do not are refused here, before Redis would.
  Keys the store uses again and again (`StableKeys`) have their slot remembered.
- **The slot map** comes from `CLUSTER SLOTS`, asked of any node that answers (the URL's
  seeds, then every node learnt), at first use, every `refresh_s`, after a MOVED and when a
  master cannot be reached (at most every `_MIN_REFRESH_S`).
- **Redirections.** MOVED updates the slot's master and sends the command there; ASK sends
  it once to the importing node after ASKING, on the same connection; TRYAGAIN waits a
  moment. A command whose master cannot be reached (it was never sent) goes to the new
  master once the map names one. A command lost with its connection is not resent
  elsewhere: it may have run.
- **Batches** (`execute_many`) are split by master, sent to each at once (one write each,
  concurrently), and the replies put back in order; each command redirected on its own.
- **Pub/sub.** Classic PUBLISH reaches the subscribers of every node, but its reply counts
  only those connected to the node it was sent to. So a channel has a home, the master of
  the channel name's slot: PUBLISH is sent there, subscriptions are made there, and follow
  it when a failover moves it (an acknowledged invalidation waits for that count).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gateway.store.base import StoreUnavailable
from gateway.wire.base import Arg, Command, Keys, Script, ScriptCall, StableKeys
from gateway.wire.redis_url import RedisEndpoint
from gateway.wire.resp import ReplyError, RespClient, RespError, Unreached, checked
from gateway.wire.resp_pubsub import Locate, Placed, Subscription
from gateway.wire.shared import Shared

log = logging.getLogger("turnout.store")

SLOTS = 16384
_REDIRECTS = 5  # MOVED/ASK/TRYAGAIN rounds for one command before giving up
_MIN_REFRESH_S = 0.1  # a lost master is asked about at most this often
_TRYAGAIN_S = 0.02
_KEYS_CACHED = 10_000
# Commands with no key: sent to any master. (Everything else routes by its first argument,
# PUBLISH by its channel: a channel's home, see above.)
_KEYLESS = frozenset({b"PING", b"ECHO", b"INFO", b"SCRIPT", b"CLUSTER", b"TIME", b"CLIENT",
                      b"CONFIG", b"DBSIZE", b"ROLE", b"ACL", b"COMMAND", b"WAIT", b"LASTSAVE",
                      b"MEMORY", b"SLOWLOG", b"LATENCY", b"FLUSHALL", b"FLUSHDB"})
_ANY = 0  # the slot whose master takes keyless commands

Address = tuple[str, int]


def key_slot(key: Arg) -> int:
    """The cluster slot of a key (of its hash tag, when it has one)."""
    data = key if type(key) is bytes else str(key).encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return binascii.crc_hqx(data, 0) & (SLOTS - 1)


def keys_slot(keys: Sequence[Arg]) -> int:
    """The one slot of a script's keys (keyless: any); RespError when they have several."""
    if not keys:
        return _ANY
    slot = key_slot(keys[0])
    for key in keys[1:]:
        if key_slot(key) != slot:
            raise RespError("CROSSSLOT the keys of one script must share a hash slot")
    return slot


def command_slot(command: Command) -> int:
    if isinstance(command, ScriptCall):
        return keys_slot(command.keys)
    name = command[0]
    name = name.upper() if type(name) is bytes else str(name).upper().encode()
    if name in (b"EVALSHA", b"EVAL"):
        return keys_slot(command[3:3 + int(command[2])])
    if len(command) < 2 or name in _KEYLESS:
        return _ANY
    return key_slot(command[1])


def _redirect(message: str) -> tuple[str, Address | None] | None:
    """(MOVED | ASK | TRYAGAIN, where) of a redirection error; None for any other."""
    kind, _, rest = message.partition(" ")
    if kind == "TRYAGAIN":
        return kind, None
    if kind not in ("MOVED", "ASK"):
        return None
    host, _, port = rest.partition(" ")[2].rpartition(":")
    return kind, (host, int(port))


class ClusterClient:
    """A `RedisConnection` to a Redis Cluster, from any of its nodes (`seeds`)."""

    def __init__(self, seeds: Sequence[RedisEndpoint], *, timeout_s: float = 1.0,
                 refresh_s: float = 5.0, first: RespClient | None = None) -> None:
        self._template = replace(seeds[0], db=0)  # a cluster has only database 0
        self._timeout = timeout_s
        self._refresh_s = refresh_s
        self._nodes: dict[Address, RespClient] = {}
        if first is not None:  # the connection that found it is a cluster: kept
            self._nodes[first.endpoint.host, first.endpoint.port] = first
        self._seeds: list[Address] = [(s.host, s.port) for s in seeds]
        self._known: list[Address] = []  # every node in the last map, masters first
        self._owners: list[RespClient] = []  # slot → its master (empty: not loaded yet)
        self._loading = Shared(self._load_slots)  # one question at a time
        self._loaded_at = -1e9
        self._refresher: asyncio.Task[None] | None = None
        self._slots: dict[Keys, int] = {}  # StableKeys → slot
        self.redirects = 0  # MOVED and ASK replies followed (a stale map costs one each)

    def __repr__(self) -> str:
        return f"ClusterClient({self._template!r})"

    # -- RedisConnection -------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        owners = self._owners or await self._load()
        slot = command_slot(args)
        node = owners[slot]
        try:
            return await node.execute(*args)
        except (RespError, Unreached) as err:
            again = await self._rerouted(err, slot, node)
            if again is None:
                raise
        return checked((await self._run([args], ask=again))[0])

    async def evalsha(self, script: Script, keys: Keys, args: Sequence[Arg], *,
                      once: bool = False) -> Any:
        owners = self._owners or await self._load()
        slot = self._keys_slot(keys)
        node = owners[slot]
        try:
            return await node.evalsha(script, keys, args, once=once)
        except (RespError, Unreached) as err:
            again = await self._rerouted(err, slot, node)
            if again is None:
                raise
        return checked((await self._run([ScriptCall(script, keys, args)], once=once,
                                        ask=again))[0])

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        return [checked(reply) for reply in await self._run(commands)]

    def subscription(self, channel: str, on_message: Callable[[bytes], None],
                     on_down: Callable[[], None], on_up: Callable[[], None]) -> Subscription:
        return Subscription(*self.placement(channel), channel, on_message, on_down, on_up,
                            timeout_s=self._timeout)

    def placement(self, channel: str) -> tuple[Locate, Placed]:
        """A channel's home: the master of its name's slot, found anew on every attempt to
        subscribe, and followed when a failover moves it."""
        slot = key_slot(channel)

        async def locate() -> RedisEndpoint:
            if self._owners:  # (re)subscribing: its home may have moved
                await self._refresh()
            owners = self._owners or await self._load()
            return owners[slot].endpoint

        def placed() -> RedisEndpoint | None:
            return self._owners[slot].endpoint if self._owners else None

        return locate, placed

    async def close(self) -> None:
        await self._loading.settle(cancel=True)
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        for node in list(self._nodes.values()):
            await node.close()

    # -- routing ---------------------------------------------------------------------------

    def _keys_slot(self, keys: Keys) -> int:
        if type(keys) is not StableKeys:
            return keys_slot(keys)
        slot = self._slots.get(keys)
        if slot is None:
            if len(self._slots) >= _KEYS_CACHED:
                self._slots.clear()  # rarely: cheaper than tracking recency
            slot = self._slots[keys] = keys_slot(keys)
        return slot

    async def _rerouted(self, err: Exception, slot: int,
                        tried: RespClient) -> RespClient | bool | None:
        """After a fast-path failure that did not run the command: None when `err` is the
        caller's; else send it again, with the map updated for it (True), or once to the
        node an ASK names."""
        if isinstance(err, Unreached):
            await self._refresh()
            return True if self._owners[slot] is not tried else None  # a new master?
        redirect = _redirect(str(err))
        if redirect is None:
            return None
        self.redirects += 1
        kind, where = redirect
        if kind == "MOVED" and where is not None:
            self._moved(slot, where)
        elif kind == "ASK" and where is not None:
            return self._node(where)
        elif kind == "TRYAGAIN":
            await asyncio.sleep(_TRYAGAIN_S)
        return True

    async def _run(self, commands: Sequence[Command], *, once: bool = False,
                   ask: RespClient | bool = False) -> list[Any]:
        """Every command's raw reply, each sent to its slot's master, redirections
        followed (`ask`: the first command goes to that node, after ASKING). StoreUnavailable
        when a master cannot be reached (after looking for a new one) or a connection is
        lost (some commands may have run)."""
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        asking: dict[int, RespClient] = {0: ask} if isinstance(ask, RespClient) else {}
        for _ in range(_REDIRECTS):
            owners = self._owners or await self._load()
            groups: dict[RespClient, list[int]] = {}
            for i in todo:
                node = asking.get(i) or owners[command_slot(commands[i])]
                groups.setdefault(node, []).append(i)
            sent = await asyncio.gather(
                *(self._send(node, [commands[i] for i in idx], {i for i in idx if i in asking},
                             idx, once) for node, idx in groups.items()),
                return_exceptions=True)
            todo, asking, wait = [], {}, False
            unreached: set[RespClient] = set()
            for (node, idx), result in zip(groups.items(), sent, strict=True):
                if isinstance(result, Unreached):
                    todo += idx  # not sent: to the new master, if there is one
                    unreached.add(node)
                    continue
                if isinstance(result, BaseException):
                    raise result
                for i, reply in zip(idx, result, strict=True):
                    redirect = _redirect(str(reply)) if type(reply) is ReplyError else None
                    if redirect is None:
                        replies[i] = reply
                        continue
                    todo.append(i)
                    self.redirects += 1
                    kind, where = redirect
                    if kind == "MOVED" and where is not None:
                        self._moved(command_slot(commands[i]), where)
                    elif kind == "ASK" and where is not None:
                        asking[i] = self._node(where)
                    else:
                        wait = True
            if not todo:
                return replies
            if unreached:
                await self._refresh()
                if any(i not in asking and self._owners[command_slot(commands[i])] in unreached
                       for i in todo):  # no new master for it (yet)
                    raise StoreUnavailable("redis unavailable (a cluster master is unreachable)")
            if wait:
                await asyncio.sleep(_TRYAGAIN_S)
        raise StoreUnavailable("redis unavailable (the cluster kept redirecting)")

    async def _send(self, node: RespClient, commands: list[Command], asked: set[int],
                    indexes: list[int], once: bool) -> list[Any]:
        """One master's share of a batch, in one write; an ASK redirection is sent after
        ASKING, which holds for the command that follows it on the same connection."""
        if not asked:
            return await node.send_raw(commands, retry=not once)
        out: list[Command] = []
        for i, command in zip(indexes, commands, strict=True):
            out += [(b"ASKING",), command] if i in asked else [command]
        replies = iter(await node.send_raw(out, retry=not once))
        kept = []
        for i in indexes:
            if i in asked:
                next(replies)  # ASKING's OK
            kept.append(next(replies))
        return kept

    # -- the slot map ----------------------------------------------------------------------

    def _node(self, address: Address) -> RespClient:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = RespClient(self._template.at(*address),
                                                     timeout_s=self._timeout)
        return node

    def _moved(self, slot: int, address: Address) -> None:
        """A MOVED reply: the slot is served elsewhere now, most likely with its whole range
        (a failover, a resharding): the map is asked for again."""
        if self._owners:
            self._owners[slot] = self._node(address)
        loop = asyncio.get_running_loop()
        if loop.time() - self._loaded_at >= _MIN_REFRESH_S:
            self._loading.start()

    async def _load(self) -> list[RespClient]:
        """The slot map, loaded if it is not yet (and the periodic refresh started)."""
        if not self._owners:
            await self._refresh(force=True)
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_every())
        return self._owners

    async def _refresh(self, *, force: bool = False) -> bool:
        """Ask for the slot map again (one question at a time, at most every
        `_MIN_REFRESH_S` unless `force`): whether any slot's master changed."""
        if not self._loading.running and not force and \
                asyncio.get_running_loop().time() - self._loaded_at < _MIN_REFRESH_S:
            return False
        return await self._loading.join()

    async def _refresh_every(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            with contextlib.suppress(StoreUnavailable):
                await self._refresh(force=True)

    async def _load_slots(self) -> bool:
        seen: set[Address] = set()
        # Nodes connected now first: a lost master may take a connect timeout to fail.
        candidates = [*self._known, *self._seeds]
        candidates.sort(key=lambda a: not (a in self._nodes and self._nodes[a].connected))
        for address in candidates:
            if address in seen:
                continue
            seen.add(address)
            try:
                reply = await self._node(address).execute(b"CLUSTER", b"SLOTS")
            except (StoreUnavailable, RespError):
                continue
            if isinstance(reply, list) and reply:
                changed = self._apply(address, reply)
                self._loaded_at = asyncio.get_running_loop().time()
                return changed
        raise StoreUnavailable("redis unavailable (no cluster node answers)")

    def _apply(self, asked: Address, ranges: list[Any]) -> bool:
        """Install a CLUSTER SLOTS reply: [start, end, [host, port, id], replicas…]…"""
        owners: list[RespClient | None] = [None] * SLOTS
        masters: list[Address] = []
        replicas: list[Address] = []
        for start, end, master, *others in ranges:
            # An empty host means "the node you asked" (cluster-announce not set).
            address = (master[0].decode() or asked[0], int(master[1]))
            node = self._node(address)
            masters.append(address)
            replicas += [(r[0].decode() or asked[0], int(r[1])) for r in others]
            owners[int(start):int(end) + 1] = [node] * (int(end) - int(start) + 1)
        fallback = self._node(masters[0])  # slots no master serves: it says CLUSTERDOWN
        new = [node or fallback for node in owners]
        changed = [n.endpoint for n in self._owners] != [n.endpoint for n in new]
        if changed and self._owners:
            log.info("redis cluster: slot map changed (%d masters)", len(set(masters)))
        self._owners = new
        self._known = list(dict.fromkeys([*masters, *replicas]))
        return changed
