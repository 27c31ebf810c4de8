"""Console test helpers: settled requests as the pipeline hands them to the recorder, a
logged-in console client over HTTP, and a reader of the live stream's events."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from gateway.accounting.metering import Outcome, RequestContext, settlement
from gateway.canonical import CanonicalRequest, Deployment, Target, Usage
from gateway.store import SettleArgs
from policies.budgets import Budget
from policies.keys import Principal
from policies.routing.base import Plan

Entry = tuple[RequestContext, Outcome, SettleArgs, Plan | None]


def deployment(dep_id: str = "gpu/10.0.0.1:8000", price: float = 1.0) -> Deployment:
    return Deployment(dep_id, "chat", "openai", Target("http://x/v1", "m"), price, price,
                      pool=dep_id.partition("/")[0] if "/" in dep_id else None)


def settled(team: str = "research", key: str = "k1", dep: Deployment | None = None,
            status: int = 200, prompt: str = "What is the capital of France?",
            tokens: tuple[int, int] = (10, 20), rid: str = "r1",
            team_budget: Budget | None = None) -> Entry:
    """One admitted request, answered and settled: what `Telemetry.settled` gets."""
    dep = dep or deployment()
    req = CanonicalRequest("chat", "chat", {"model": "chat", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]},
        request_id=rid)
    ctx = RequestContext(Principal(team=team, key_id=key, team_budget=team_budget), req,
                         f"adm-{rid}", 10, 100, 0, ())
    out = Outcome(time.monotonic() - 0.05)
    out.status, out.deployment, out.usage = status, dep, Usage(*tokens)
    out.first_byte = time.monotonic()
    plan = Plan([dep, deployment("gpu/10.0.0.2:8000")], "slo-cost", "cheapest meeting ttft",
                {dep.id: 0.0123, "gpu/10.0.0.2:8000": -1.0}, True, 0.0123)
    return ctx, out, settlement(ctx, out), plan


class ConsoleClient:
    """A console session over HTTP, as a script (not a browser) holds one."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=10)
        self.login = self.http.post("/console/api/login", json={"key": key})
        self.login.raise_for_status()
        self.csrf: str = self.login.json()["csrf"]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"x-csrf-token": self.csrf, **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def frame_where(self, ready: Callable[[dict[str, Any]], bool], timeout: float = 20
                    ) -> dict[str, Any]:
        """The first live frame for which `ready` holds (fails after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self.http.stream("GET", "/console/api/live", timeout=timeout) as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "frame":
                    frame = orjson.loads(line[6:])
                    if ready(frame):
                        return frame
                if time.monotonic() > deadline:
                    break
        raise AssertionError(f"no live frame matched within {timeout}s")

    def close(self) -> None:
        self.http.close()


def deployment_rows(frame: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for m in frame.get("models", ()) for d in m["deployments"]}


class Traffic:
    """Chat requests sent back to back from a few threads until stopped, counting the
    answers by status: live traffic for the console to show."""

    def __init__(self, base: str, key: str, threads: int = 2, model: str = "chat") -> None:
        import threading

        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        body = {"model": model, "max_tokens": 4, "stream": True,
                "messages": [{"role": "user", "content": "abcd"}]}

        def run() -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                while not self._stop.is_set():
                    r = client.post("/v1/chat/completions", json=body,
                                    headers={"authorization": f"Bearer {key}"})
                    with self._lock:
                        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1

        self._threads = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    @property
    def sent(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
