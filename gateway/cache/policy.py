"""Which requests the response cache takes, and how.

`Policies` resolves the config once per (model, team) pair: the top-level `cache`, then the
model's and the team's `cache` settings, the stricter winning where both say something.
`directives` reads one request's own `Cache-Control` and `x-turnout-cache-ttl`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.canonical import CanonicalRequest
from gateway.config import Config
from gateway.config.cache import CacheConfig, CacheSettings
from gateway.errors import bad_request

RawHeaders = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Policy:
    """The cache as it applies to one model for one team."""

    shared: bool  # one namespace for every team
    ttl_s: float
    max_ttl_s: float
    max_entry_bytes: int
    deterministic_only: bool
    coalesce: bool


def _flag(values: list[bool | None], default: bool, strict: bool) -> bool:
    """An explicit `strict` value anywhere wins, then any explicit value, then the default."""
    said = [v for v in values if v is not None]
    if strict in said:
        return strict
    return said[0] if said else default


def _least(values: list[float | None], default: float) -> float:
    said = [v for v in values if v is not None]
    return min(said) if said else default


def resolve(top: CacheConfig, model: CacheSettings | None, team: CacheSettings | None,
            shared: bool) -> Policy | None:
    """The policy, or None when caching is off for the pair."""
    both = [s for s in (model, team) if s is not None]
    if not _flag([s.enabled for s in both], top.enabled, strict=False):
        return None
    return Policy(
        shared=shared,
        ttl_s=_least([s.ttl_s for s in both], top.ttl_s),
        max_ttl_s=top.max_ttl_s,
        max_entry_bytes=int(_least([s.max_entry_bytes for s in both], top.max_entry_bytes)),
        deterministic_only=_flag([s.deterministic_only for s in both], top.deterministic_only,
                                 strict=True),
        coalesce=_flag([s.coalesce for s in both], top.coalesce, strict=False),
    )


class Policies:
    def __init__(self, cfg: Config) -> None:
        self._top = cfg.cache
        self._models = {name: mc.cache for name, mc in cfg.models.items()}
        self._teams = {t.name: t.cache for t in cfg.teams}
        # Resolved on first use: a dict hit per request afterwards. Teams made at run time
        # (admin API) have no settings of their own and inherit the top level.
        self._resolved: dict[tuple[str, str], Policy | None] = {}

    @property
    def any_enabled(self) -> bool:
        """Whether any model and team could be cached at all (else the cache is not built)."""
        said = [s.enabled for s in (*self._models.values(), *self._teams.values())
                if s is not None]
        return self._top.enabled or True in said

    def get(self, model: str, team: str) -> Policy | None:
        pair = (model, team)
        try:
            return self._resolved[pair]
        except KeyError:
            pass
        mc = self._models.get(model)
        policy = resolve(self._top, mc, self._teams.get(team), bool(mc and mc.shared))
        self._resolved[pair] = policy
        return policy


@dataclass(slots=True)
class Directives:
    """One request's say: `Cache-Control: no-cache` (do not answer from the cache, still
    store), `no-store` (neither), `max-age=N` (only an answer at most N s old);
    `x-turnout-cache-ttl: N` (keep this answer N s; 0: do not store it)."""

    lookup: bool = True
    store: bool = True
    max_age_s: int | None = None
    ttl_s: int | None = None


def directives(headers: RawHeaders) -> Directives:
    d = Directives()
    for name, value in headers:
        if name == b"cache-control":
            _cache_control(d, value)
        elif name == b"x-turnout-cache-ttl":
            text = value.strip()
            if not text.isdigit():
                raise bad_request("`x-turnout-cache-ttl` must be a whole number of seconds")
            d.ttl_s = int(text)
            d.store = d.store and d.ttl_s > 0
    return d


def _cache_control(d: Directives, value: bytes) -> None:
    # As HTTP caches do, directives that do not parse are ignored rather than refused.
    for part in value.lower().split(b","):
        directive = part.strip()
        if directive == b"no-cache":
            d.lookup = False
        elif directive == b"no-store":
            d.lookup = d.store = False
        elif directive.startswith(b"max-age="):
            age = directive[8:].strip(b' "')
            if age.isdigit():
                d.max_age_s = int(age)


def deterministic(req: CanonicalRequest) -> bool:
    """The same request gets the same answer: greedy sampling or a fixed seed (embeddings
    always)."""
    if req.operation == "embeddings":
        return True
    body = req.body
    temperature = body.get("temperature")
    return (temperature == 0 and not isinstance(temperature, bool)) or (
        isinstance(body.get("seed"), int) and not isinstance(body.get("seed"), bool))
