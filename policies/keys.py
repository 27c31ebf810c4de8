"""Teams, keys and the `Principal` a request runs as.

Keys are random bearer secrets (`tk-` + 32 random bytes, url-safe base64). Only their
SHA-256 is stored: a key has 256 bits of entropy, so a fast hash is as good as a slow one
(there is nothing to brute-force) and keeps authentication cheap. Records are plain
dicts (orjson) so both stores hold them as bytes; policy values are validated where they
enter (config, admin API), never on the hot path.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from policies.budgets import Budget
from policies.ratelimits import Limits

KEY_PREFIX = "tk-"
ANONYMOUS_TEAM = "anonymous"
# Team and key ids end up inside Redis key names and `{team}` hash tags: no braces, no
# colons, no spaces.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # not ".." nor "-x"


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def new_key_id() -> str:
    return "k" + os.urandom(5).hex()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(slots=True, frozen=True)
class TeamPolicy:
    name: str
    priority: int = 0
    models: tuple[str, ...] = ()  # empty: every model
    limits: Limits = field(default_factory=Limits)  # the whole team, across all its keys
    # The default for each key that sets none of its own.
    key_limits: Limits = field(default_factory=Limits)
    budget: Budget | None = None
    slo_ttft_ms: float | None = None  # the team's latency target, for routing

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "priority": self.priority, "models": list(self.models),
                "limits": self.limits.to_dict(), "key_limits": self.key_limits.to_dict(),
                "budget": self.budget.to_dict() if self.budget else None,
                "slo_ttft_ms": self.slo_ttft_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeamPolicy:
        return cls(name=d["name"], priority=int(d.get("priority") or 0),
                   models=tuple(d.get("models") or ()),
                   limits=Limits.from_dict(d.get("limits")),
                   key_limits=Limits.from_dict(d.get("key_limits")),
                   budget=Budget.from_dict(d.get("budget")),
                   slo_ttft_ms=d.get("slo_ttft_ms"))


@dataclass(slots=True, frozen=True)
class KeyRecord:
    id: str
    team: str
    hash: str
    created: float
    name: str = ""
    limits: Limits | None = None  # None: the team's key_limits
    budget: Budget | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "team": self.team, "hash": self.hash, "created": self.created,
                "name": self.name, "limits": self.limits.to_dict() if self.limits else None,
                "budget": self.budget.to_dict() if self.budget else None}

    def public(self) -> dict[str, Any]:
        """What the admin API and CLI show: everything but the hash."""
        d = self.to_dict()
        del d["hash"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyRecord:
        limits = d.get("limits")
        return cls(id=d["id"], team=d["team"], hash=d["hash"], created=float(d["created"]),
                   name=d.get("name") or "",
                   limits=Limits.from_dict(limits) if limits is not None else None,
                   budget=Budget.from_dict(d.get("budget")))


@dataclass(slots=True, frozen=True)
class Principal:
    """Who a request runs as: resolved once per request from its bearer key."""

    team: str
    key_id: str
    priority: int = 0
    models: frozenset[str] = field(default_factory=frozenset)  # empty: every model
    key_limits: Limits = field(default_factory=Limits)
    team_limits: Limits = field(default_factory=Limits)
    team_budget: Budget | None = None
    key_budget: Budget | None = None
    slo_ttft_ms: float | None = None

    @property
    def anonymous(self) -> bool:
        return not self.key_id

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models

    @classmethod
    def of(cls, team: TeamPolicy, key: KeyRecord) -> Principal:
        return cls(team=team.name, key_id=key.id, priority=team.priority,
                   models=frozenset(team.models),
                   key_limits=key.limits if key.limits is not None else team.key_limits,
                   team_limits=team.limits, team_budget=team.budget, key_budget=key.budget,
                   slo_ttft_ms=team.slo_ttft_ms)


ANONYMOUS = Principal(team=ANONYMOUS_TEAM, key_id="")
