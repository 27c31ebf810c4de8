"""The `console:` section of the config (gateway/config/ holds it as `Config.console`).

Kept here, beside the console, and free of imports from the rest of the gateway, so that
gateway/config/ can import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["read-only", "admin"]
MIN_CONSOLE_KEY = 32  # as for auth.admin_key: a console key can revoke every other key
_USER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsoleUser(_Strict):
    name: str = Field(pattern=_USER_NAME)
    key: str = Field(description="the user's console key, from the environment: ${VAR}; "
                     "unset or empty: the user cannot log in")
    role: Role = "read-only"

    @field_validator("key")
    @classmethod
    def _strong(cls, v: str) -> str:
        if v and (len(v) < MIN_CONSOLE_KEY or len(set(v)) < 8):
            raise ValueError(f"must be at least {MIN_CONSOLE_KEY} characters, not a repetition"
                             " (e.g. `openssl rand -hex 24`)")
        return v


class ConsoleConfig(_Strict):
    enabled: bool | None = Field(None, description="unset: on when auth.admin_key or a console"
                                 " user is configured (someone can log in)")
    users: list[ConsoleUser] = []
    session_ttl_s: float = Field(8 * 3600.0, gt=0, le=30 * 86400,
                                 description="a login lasts this long (server-side session)")
    sample_per_s: float = Field(10.0, ge=0, le=1000, description=(
        "decisions sampled per gateway process per second for the Decisions stream"))
    secure_cookie: bool | None = Field(None, description=(
        "the session cookie's Secure flag; unset: when the request came over https"))
    allowed_origins: list[str] = Field([], description=(
        "origins besides the gateway's own (its Host) that may send changes, e.g. the"
        " public URL of a TLS proxy in front of it: https://console.example.com"))

    def on(self, admin_key: str | None) -> bool:
        """Whether the console is served: explicitly, or because someone can log in."""
        if self.enabled is not None:
            return self.enabled
        return bool(admin_key or self.logins())

    def logins(self) -> list[ConsoleUser]:
        """The users who can log in (a key resolved from an unset variable cannot)."""
        return [u for u in self.users if u.key]

    def problems(self, admin_key: str | None, team_keys: Sequence[str]) -> list[str]:
        """What the config as a whole gets wrong about the console."""
        out: list[str] = []
        if self.enabled and not (admin_key or self.logins()):
            out.append("console.enabled: nobody could log in: set auth.admin_key or"
                       " console.users")
        names = [u.name for u in self.users]
        out += [f"console.users: user {n!r} is declared twice" for n in sorted(set(names))
                if names.count(n) > 1]
        keys = [u.key for u in self.logins()]
        taken = {*team_keys, *([admin_key] if admin_key else [])}
        if len(set(keys)) != len(keys) or taken.intersection(keys):
            out.append("console.users: two console keys, or a console key and a team key or"
                       " auth.admin_key, are the same")
        return out
