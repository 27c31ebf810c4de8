"""The admin API: teams, keys and usage, under `/admin/`, for holders of `auth.admin_key`.

JSON in and out (errors in OpenAI's shape). Not on the hot path: input is validated with
the config's pydantic models, so the admin API accepts exactly what the config does.
"""

from __future__ import annotations

import datetime
import re
import time
from typing import Any
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.accounting import ledger
from gateway.config import format_errors
from gateway.config.accounts import NAME_PATTERN, BudgetConfig, LimitsConfig, TeamConfig
from gateway.errors import GatewayError, bad_request
from gateway.http.asgi import (
    Receive,
    Scope,
    Send,
    client_address,
    header,
    read_body,
    send_response,
)
from gateway.http.openai_format import error_body
from gateway.services import Services
from gateway.store import layout
from policies.budgets import Budget, period_id, to_usd
from policies.keys import ANONYMOUS_TEAM, TeamPolicy, new_key_id
from policies.ratelimits import Limits

_MAX_BODY = 64 * 1024
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, pattern=NAME_PATTERN)
    name: str = ""
    limits: LimitsConfig | None = None
    budget: BudgetConfig | None = None


def _not_found(what: str) -> GatewayError:
    return GatewayError(404, f"{what} not found", code="not_found")


def _validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise bad_request("; ".join(format_errors(err))) from None


class AdminAPI:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._authorize(header(scope, b"authorization"), client_address(scope))
            parts = tuple(p for p in scope["path_params"]["rest"].split("/") if p)
            query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
            body = b""
            if scope["method"] in ("POST", "PUT"):
                body = await read_body(receive, _MAX_BODY, header(scope, b"content-length"))
            status, payload, ctype = await self._route(scope["method"], parts, query, body)
        except GatewayError as err:
            await send_response(send, err.status, error_body(err),
                                [(k.encode(), v.encode()) for k, v in err.headers.items()])
            return
        await send_response(send, status, payload, [], ctype)

    def _authorize(self, authorization: bytes | None, client: str | None) -> None:
        authenticator = self.services.authenticator
        if authorization is None:
            raise GatewayError(401, "admin API: send `Authorization: Bearer ADMIN_KEY`",
                               code="invalid_api_key")
        if not authenticator.admin_enabled:
            raise GatewayError(403, "the admin API is disabled: set auth.admin_key",
                               code="permission_denied")
        if not authenticator.is_admin(authorization, client):
            raise GatewayError(403, "this key is not the admin key", code="permission_denied")

    async def _route(self, method: str, parts: tuple[str, ...], query: dict[str, str],
                     body: bytes) -> tuple[int, bytes, bytes]:
        route = (method, parts[:1], len(parts))
        if route == ("GET", ("teams",), 1):
            teams = self.services.accounts
            return _json(200, {"object": "list", "data": [
                await self._team(n) for n in await teams.team_names()]})
        if parts[:1] == ("teams",) and len(parts) >= 2:
            return await self._team_route(method, parts[1], parts[2:], body)
        if route == ("GET", ("usage",), 1):
            rows = await ledger.rollups(self.services.store, await self._teams(query),
                                       since=_day(query, "from"), until=_day(query, "to"),
                                       by=_dimensions(query.get("by")))
            return 200, *ledger.export(rows, _format(query, "json"))
        if route == ("GET", ("events",), 1):
            rows = await ledger.events(self.services.store, await self._teams(query),
                                      after=_after(query), limit=_limit(query))
            return 200, *ledger.export(rows, _format(query, "jsonl"))
        raise _not_found(f"admin route {method} /admin/{'/'.join(parts)}")

    async def _team_route(self, method: str, team: str, rest: tuple[str, ...],
                          body: bytes) -> tuple[int, bytes, bytes]:
        accounts = self.services.accounts
        if rest == () and method == "GET":
            return _json(200, await self._team(team))
        if rest == () and method == "PUT":
            return _json(200, await self._put_team(team, _body(body)))
        if await accounts.get_team(team) is None:
            raise _not_found(f"team {team!r}")
        if rest == ("keys",) and method == "GET":
            return _json(200, {"object": "list",
                               "data": [k.public() for k in await accounts.keys(team)]})
        if rest == ("keys",) and method == "POST":
            return _json(201, await self._create_key(team, _body(body)))
        if len(rest) == 2 and rest[0] == "keys" and method == "DELETE":
            if not await accounts.revoke_key(team, rest[1]):
                raise _not_found(f"key {rest[1]!r} of team {team!r}")
            return _json(200, {"id": rest[1], "team": team, "revoked": True})
        raise _not_found(f"admin route {method} /admin/teams/{team}/{'/'.join(rest)}")

    async def _team(self, name: str) -> dict[str, Any]:
        policy = await self.services.accounts.get_team(name)
        if policy is None:
            raise _not_found(f"team {name!r}")
        ledger = await self.services.store.hgetall(layout.budget(name))
        current = period_id(policy.budget.period if policy.budget else "monthly", time.time())
        period = ledger.get("period", b"").decode()
        spent = int(ledger.get("spent", b"0")) if period == current else 0
        return {**policy.to_dict(), "spend": {
            "period": current, "spent_usd": to_usd(spent),
            "reserved_usd": to_usd(int(ledger.get("reserved", b"0"))),
            "budget_usd": policy.budget.usd if policy.budget else None}}

    async def _put_team(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Create a team, or change the fields given (others keep their values)."""
        accounts = self.services.accounts
        current = await accounts.get_team(name)
        merged = {**(current.to_dict() if current else {}), **patch, "name": name}
        cfg: TeamConfig = _validated(TeamConfig, merged)
        unknown = [m for m in cfg.models if m not in self.services.pipeline.registry.models]
        if unknown:
            raise bad_request(f"unknown models: {', '.join(unknown)}", param="models")
        await accounts.put_team(TeamPolicy.from_dict(cfg.model_dump(exclude={"keys"})))
        return await self._team(name)

    async def _create_key(self, team: str, data: dict[str, Any]) -> dict[str, Any]:
        spec: NewKey = _validated(NewKey, data)
        accounts = self.services.accounts
        key_id = spec.id or new_key_id()
        if any(k.id == key_id for k in await accounts.keys(team)):
            raise GatewayError(409, f"team {team!r} already has a key {key_id!r}",
                               code="conflict")
        record, secret = await accounts.create_key(
            team, key_id, spec.name,
            Limits(**spec.limits.model_dump()) if spec.limits else None,
            Budget.from_dict(spec.budget.model_dump() if spec.budget else None))
        return {**record.public(), "key": secret}

    async def _teams(self, query: dict[str, str]) -> list[str]:
        if "team" in query:
            return [query["team"]]
        return [*await self.services.accounts.team_names(), ANONYMOUS_TEAM]


def _json(status: int, payload: Any) -> tuple[int, bytes, bytes]:
    return status, orjson.dumps(payload), b"application/json"


def _body(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


def _dimensions(value: str | None) -> tuple[str, ...]:
    if not value:
        return ledger.DIMENSIONS
    dims = tuple(d.strip() for d in value.split(",") if d.strip())
    if not dims or any(d not in ledger.DIMENSIONS for d in dims):
        raise bad_request(f"`by` takes a comma-separated subset of {', '.join(ledger.DIMENSIONS)}",
                          param="by")
    return dims


def _day(query: dict[str, str], name: str) -> str:
    value = query.get(name, "")
    if value:
        try:
            if not _DAY.match(value):
                raise ValueError(value)
            datetime.date.fromisoformat(value)  # a real day: not 2026-13-45
        except ValueError:
            raise bad_request(f"`{name}` is a day, YYYY-MM-DD", param=name) from None
    return value


def _after(query: dict[str, str]) -> str | None:
    """`after`: an event's id, as the events endpoint returns them (a stream id)."""
    value = query.get("after")
    if value is not None and not _STREAM_ID.match(value):
        raise bad_request("`after` is an event id as returned in `id`, e.g. 1700000000000-0",
                          param="after")
    return value


def _format(query: dict[str, str], default: str) -> str:
    fmt = query.get("format", default)
    if fmt not in ("json", "jsonl", "csv"):
        raise bad_request("`format` is json, jsonl or csv", param="format")
    return fmt


def _limit(query: dict[str, str]) -> int | None:
    value = query.get("limit")
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise bad_request("`limit` is a positive integer", param="limit")
    return int(value)
