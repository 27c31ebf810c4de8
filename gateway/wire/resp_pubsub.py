"""A Redis pub/sub subscription, kept open on a connection of its own.

The store's main connection matches replies to commands by their order; a subscribed
connection also receives messages nobody asked for, so it gets its own socket and parser.
A silent connection cannot be told from a dead one, so a PING goes out every `timeout_s`
and the connection is dropped when nothing has come back by the next one. Whenever the
subscription is lost, `on_down` is called (messages may be missed from then on) and it is
made again with backoff; `on_up` is called whenever it is subscribed (the first time too);
`live` says whether it is subscribed now.

Where it subscribes is asked anew for every attempt (`locate`): a Sentinel's current
master, a cluster's node for the channel. And while subscribed it checks, at every PING,
whether it should be elsewhere now (`placed`): after a failover the publishers' PUBLISH
goes to the new master, whose reply counts only the subscribers connected to it, so the
subscription moves there (an acknowledged invalidation waits for that count).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

from gateway.store.base import StoreUnavailable
from gateway.wire.redis_url import RedisEndpoint, connect
from gateway.wire.resp_codec import encode

log = logging.getLogger("turnout.store")

_PING = encode((b"PING",))
_BACKOFF_S = (0.05, 2.0)  # first and longest wait between attempts to subscribe again
_MORE = object()


class _Listener(asyncio.Protocol):
    def __init__(self, on_reply: Callable[[Any], None]) -> None:
        self._reader = hiredis.Reader(notEnoughData=_MORE)
        self._on_reply = on_reply
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            reply = self._reader.gets()
            while reply is not _MORE:
                self._on_reply(reply)
                reply = self._reader.gets()
        except hiredis.ProtocolError:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if not self.lost.done():
            self.lost.set_result(None)


Locate = Callable[[], Awaitable[RedisEndpoint]]  # where to subscribe now (may ask Redis)
Placed = Callable[[], RedisEndpoint | None]  # where it should be now (None: anywhere), cheap


class Subscription:
    def __init__(self, locate: Locate, placed: Placed, channel: str,
                 on_message: Callable[[bytes], None], on_down: Callable[[], None],
                 on_up: Callable[[], None], *, timeout_s: float = 1.0) -> None:
        self._locate = locate
        self._placed = placed
        self._target: RedisEndpoint | None = None
        self._channel = channel.encode()
        self._on_message = on_message
        self._on_down = on_down
        self._on_up = on_up  # subscribed (the first time too)
        self._timeout = timeout_s
        self.live = False
        self._subscribed = asyncio.Event()
        self._heard = 0.0  # loop time of the last reply
        self._handshake = 0  # handshake replies still to come on this connection
        self._listener: _Listener | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start subscribing; wait (up to the timeout) for the first subscription."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(self._subscribed.wait(), self._timeout)
        except TimeoutError:
            log.warning("redis subscription to %s not made yet; retrying in the background",
                        self._channel.decode())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()

    async def _run(self) -> None:
        backoff = _BACKOFF_S[0]
        while True:
            try:
                await self._session()
            except (OSError, TimeoutError, StoreUnavailable) as err:
                log.debug("redis subscription lost: %s", type(err).__name__)
            if self.live:
                self.live = False
                backoff = _BACKOFF_S[0]
                log.warning("redis subscription to %s lost; subscribing again",
                            self._channel.decode())
                self._on_down()
            await asyncio.sleep(backoff)
            backoff = min(_BACKOFF_S[1], backoff * 2)

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        listener = self._listener = _Listener(self._reply)
        async with asyncio.timeout(self._timeout):
            target = self._target = await self._locate()
            await connect(target, listener)
        assert listener.transport is not None
        handshake = [encode(c) for c in target.handshake()]
        self._handshake = len(handshake)
        listener.transport.writelines([*handshake, encode((b"SUBSCRIBE", self._channel))])
        try:
            while not listener.lost.done():
                pinged = loop.time()
                listener.transport.write(_PING)
                await asyncio.wait([listener.lost], timeout=self._timeout)
                if self._heard < pinged and not listener.lost.done():
                    raise TimeoutError  # nothing back within the timeout: a stalled server
                placed = self._placed()
                if placed is not None and placed != target:
                    log.info("redis subscription to %s: moving to the new master",
                             self._channel.decode())
                    return
        finally:
            listener.close()

    def _reply(self, reply: Any) -> None:
        self._heard = asyncio.get_running_loop().time()
        if self._handshake:  # AUTH / SELECT
            self._handshake -= 1
            if type(reply) is hiredis.ReplyError and self._listener is not None:
                scrub = self._target.scrub if self._target is not None else str
                log.warning("redis subscription: %s", scrub(str(reply)))
                self._listener.close()
            return
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind == b"message":
            try:
                self._on_message(reply[2])
            except Exception:  # one bad message must not end the subscription
                log.exception("redis subscription: handling a message failed")
        elif kind == b"subscribe":
            self.live = True
            self._subscribed.set()
            self._on_up()
