"""LoRA adapters on a pool's replicas: which replica has which adapter loaded (its
`/v1/models`, where vLLM lists each loaded adapter with the base model as `parent` and
its path as `root`), so a request for an adapter goes only to replicas that have it, and
loading one on demand (`POST /v1/load_lora_adapter`, vLLM with
VLLM_ALLOW_RUNTIME_LORA_UPDATING) when no replica has it and the pool allows it
(`pools[].lora.dynamic_loading`): on the least-loaded replica with a free adapter slot
(`vllm:lora_requests_info`: fewer adapters running or waiting than its `max_lora`; a
replica without one would swap adapters in and out), else the least-loaded.

The loaded sets and slots are refreshed every `refresh_s` per pool, and at once after a
load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence

import orjson

from gateway.canonical import Deployment

log = logging.getLogger("turnout.lora")

# GET a URL within a timeout; POST a JSON body: (status, body), None when not had in time.
Fetch = Callable[[str, float], Awaitable[tuple[int, bytes] | None]]
Post = Callable[[str, bytes, float], Awaitable[tuple[int, bytes] | None]]
_TIMEOUT_S = 2.0
_LOAD_TIMEOUT_S = 60.0  # an adapter is read from disk (or a hub) and put on the device


def root_of(dep: Deployment) -> str:
    """The server root of a pool replica's deployment (its base URL less `/v1`)."""
    return dep.target.base_url.removesuffix("/v1")


_LORA_INFO = re.compile(r"^vllm:lora_requests_info\{([^}]*)\}", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_lora_info(metrics: str) -> tuple[int, int] | None:
    """(max_lora, adapters running or waiting) from vLLM's `vllm:lora_requests_info`
    (the most recent sample: the gauge's value is its time); None without it."""
    best: tuple[float, tuple[int, int]] | None = None
    for m in _LORA_INFO.finditer(metrics):
        labels = dict(_LABEL.findall(m.group(1)))
        try:
            stamp = float(metrics[m.end():].split("\n", 1)[0].strip() or 0)
            cap = int(labels.get("max_lora", ""))
        except ValueError:
            continue
        busy = {a for key in ("running_lora_adapters", "waiting_lora_adapters")
                for a in labels.get(key, "").split(",") if a}
        if best is None or stamp >= best[0]:
            best = (stamp, (cap, len(busy)))
    return None if best is None else best[1]


def parse_adapters(body: bytes) -> dict[str, str] | None:
    """Adapter name → path from a vLLM `/v1/models` answer; None when it is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    cards = data.get("data") if isinstance(data, dict) else None
    if not isinstance(cards, list):
        return None
    return {c["id"]: str(c.get("root") or "") for c in cards
            if isinstance(c, dict) and isinstance(c.get("id"), str) and c.get("parent")}


class AdapterDirectory:
    """Replica root → its loaded adapters (name → path), for every pool that serves
    adapter deployments; `ensure` loads one where none has it and the pool allows."""

    def __init__(self, fetch: Fetch, post: Post, *, members: Callable[[str], list[str]],
                 load: Callable[[Deployment], float], dynamic: dict[str, bool],
                 refresh_s: float = 5.0) -> None:
        self._fetch, self._post = fetch, post
        self._members = members
        self._load = load  # a deployment's load (routing's measure)
        self._dynamic = dynamic  # pool → may adapters be loaded on demand
        self._refresh_s = refresh_s
        self.loaded: dict[str, dict[str, str]] = {}
        self.slots: dict[str, tuple[int, int]] = {}  # root → (max_lora, running or waiting)
        self._loading: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._task: asyncio.Task[None] | None = None

    def has(self, dep: Deployment) -> bool:
        return dep.target.upstream_model in self.loaded.get(root_of(dep), {})

    async def refresh(self, roots: Sequence[str]) -> None:
        async def one(root: str) -> None:
            got, metrics = await asyncio.gather(self._fetch(root + "/v1/models", _TIMEOUT_S),
                                                self._fetch(root + "/metrics", _TIMEOUT_S))
            adapters = parse_adapters(got[1]) if got is not None and got[0] == 200 else None
            if adapters is not None:
                self.loaded[root] = adapters
            info = (parse_lora_info(metrics[1].decode(errors="replace"))
                    if metrics is not None and metrics[0] == 200 else None)
            if info is not None:
                self.slots[root] = info
        await asyncio.gather(*(one(r) for r in roots))

    async def start(self) -> None:
        await self.refresh(self._all())
        self._task = asyncio.create_task(self._every())

    def _all(self) -> list[str]:
        return [root for pool in self._dynamic for root in self._members(pool)]

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh(self._all())
            except Exception:  # the directory must outlive any one bad round
                log.exception("refreshing LoRA adapters failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def ensure(self, deps: Sequence[Deployment]) -> str | None:
        """For a request to an adapter: if no replica has it loaded and its pool allows,
        load it on the least-loaded replica; what was done, for the route header."""
        adapters = [d for d in deps if d.adapter_path is not None and d.pool is not None]
        if not adapters or any(self.has(d) for d in adapters):
            return None
        pool = adapters[0].pool
        if pool is None or not self._dynamic.get(pool):
            return None
        dep = min(adapters, key=lambda d: (not self._free_slot(d), self._load(d)))
        name, root = dep.target.upstream_model, root_of(dep)
        key = (root, name)
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.get_running_loop().create_future()
            try:
                pending.set_result(await self._load_on(root, name, dep.adapter_path or ""))
            finally:
                del self._loading[key]
        loaded = await asyncio.shield(pending)
        return f"loaded adapter {name} on {dep.id}" if loaded else None

    def _free_slot(self, dep: Deployment) -> bool:
        cap, busy = self.slots.get(root_of(dep), (1, 0))
        return busy < cap

    async def _load_on(self, root: str, name: str, path: str) -> bool:
        body = orjson.dumps({"lora_name": name, "lora_path": path})
        got = await self._post(root + "/v1/load_lora_adapter", body, _LOAD_TIMEOUT_S)
        ok = got is not None and (got[0] == 200 or b"already been loaded" in got[1])
        if ok:
            self.loaded.setdefault(root, {})[name] = path
            log.info("loaded LoRA adapter %s on %s", name, root)
        else:
            log.warning("loading LoRA adapter %s on %s failed: %s", name, root,
                        "no answer" if got is None else f"HTTP {got[0]}")
        return ok
