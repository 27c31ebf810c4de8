"""`turnout teams|keys|usage`: a thin client of the admin API of a running gateway.

Going through the API (not the store) means the CLI works the same with the in-memory
store and with Redis, and the admin API stays the single place that validates changes.
The gateway's URL defaults to the config's server address (or $TURNOUT_URL), the admin
key to $TURNOUT_ADMIN_KEY.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from gateway.config import ConfigError, load_config


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    if os.environ.get("TURNOUT_URL"):
        return os.environ["TURNOUT_URL"].rstrip("/")
    try:
        server = load_config(args.config).server
        host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
        return f"http://{host}:{server.port}"
    except ConfigError:
        return "http://127.0.0.1:8080"


def call(args: argparse.Namespace, method: str, path: str, body: Any = None,
         query: dict[str, str] | None = None) -> tuple[int, bytes]:
    url = _base_url(args) + "/admin/" + path
    if query:
        url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
    req = urllib.request.Request(url, method=method,
                                 data=orjson.dumps(body) if body is not None else None)
    req.add_header("authorization", f"Bearer {args.admin_key or ''}")
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except urllib.error.URLError as err:
        return 0, f"cannot reach the gateway at {url}: {err.reason}".encode()


def _show(status: int, body: bytes) -> int:
    if 200 <= status < 300:
        text = body.decode()
        # One JSON document: indent it; JSONL and CSV pass through as they are.
        with contextlib.suppress(orjson.JSONDecodeError):
            text = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0
    try:
        message = orjson.loads(body)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = body.decode(errors="replace")
    print(f"turnout: {message}" + (f" (HTTP {status})" if status else ""), file=sys.stderr)
    return 1


def _limits(rpm: int | None, tpm: int | None) -> dict[str, int] | None:
    if rpm is None and tpm is None:
        return None
    return {"rpm": rpm or 0, "tpm": tpm or 0}


def _budget(args: argparse.Namespace) -> dict[str, Any] | None:
    return None if args.budget_usd is None else {"usd": args.budget_usd, "period": args.period}


def teams(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _show(*call(args, "GET", "teams"))
    if args.action == "show":
        return _show(*call(args, "GET", f"teams/{args.team}"))
    patch: dict[str, Any] = {}
    if args.priority is not None:
        patch["priority"] = args.priority
    if args.models is not None:
        patch["models"] = [m for m in args.models.split(",") if m]
    for name, value in (("limits", _limits(args.rpm, args.tpm)),
                        ("key_limits", _limits(args.key_rpm, args.key_tpm)),
                        ("budget", _budget(args))):
        if value is not None:
            patch[name] = value
    if args.no_budget:
        patch["budget"] = None
    return _show(*call(args, "PUT", f"teams/{args.team}", patch))


def keys(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _show(*call(args, "GET", f"teams/{args.team}/keys"))
    if args.action == "revoke":
        return _show(*call(args, "DELETE", f"teams/{args.team}/keys/{args.key_id}"))
    body = {"id": args.id, "name": args.name or "", "limits": _limits(args.rpm, args.tpm),
            "budget": _budget(args)}
    status, raw = call(args, "POST", f"teams/{args.team}/keys", body)
    if status == 201:
        created = orjson.loads(raw)
        print(f"key {created['id']} for team {created['team']} (shown once, store it now):")
        print(created["key"])
        return 0
    return _show(status, raw)


def usage(args: argparse.Namespace) -> int:
    query = {"team": args.team, "from": args.since, "to": args.until}
    if args.events:
        return _show(*call(args, "GET", "events", query={**query, "format": args.format
                                                         if args.format != "table" else "jsonl"}))
    query["by"] = args.by
    if args.format != "table":
        return _show(*call(args, "GET", "usage", query={**query, "format": args.format}))
    status, raw = call(args, "GET", "usage", query=query)
    if status != 200:
        return _show(status, raw)
    rows = orjson.loads(raw)["data"]
    cols = [*args.by.split(","), "requests", "prompt_tokens", "completion_tokens",
            "cached_tokens", "errors", "cost_usd"]
    table = [cols] + [[f"{r[c]:.6f}" if c == "cost_usd" else str(r[c]) for c in cols]
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def add_commands(sub: Any, default_config: str) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="gateway URL (default: $TURNOUT_URL, else the config's)")
        p.add_argument("--admin-key", default=os.environ.get("TURNOUT_ADMIN_KEY"),
                       help="admin key (default: $TURNOUT_ADMIN_KEY)")
        p.add_argument("--config", default=default_config, help="config, for the default URL")

    def budget(p: argparse.ArgumentParser) -> None:
        p.add_argument("--budget-usd", type=float)
        p.add_argument("--period", choices=["daily", "monthly"], default="monthly")

    p = sub.add_parser("teams", help="list, show or change teams (admin API)")
    common(p)
    p.add_argument("action", choices=["list", "show", "set"])
    p.add_argument("team", nargs="?", default="")
    p.add_argument("--priority", type=int)
    p.add_argument("--models", help="comma-separated allowed models ('' for all)")
    for flag in ("--rpm", "--tpm", "--key-rpm", "--key-tpm"):
        p.add_argument(flag, type=int)
    budget(p)
    p.add_argument("--no-budget", action="store_true", help="remove the team's budget")
    p.set_defaults(func=teams)

    p = sub.add_parser("keys", help="create, list or revoke a team's keys (admin API)")
    common(p)
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("team")
    p.add_argument("key_id", nargs="?", help="the key to revoke")
    p.add_argument("--id", help="key id (default: generated)")
    p.add_argument("--name")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    budget(p)
    p.set_defaults(func=keys)

    p = sub.add_parser("usage", help="usage and cost by team, model and day (admin API)")
    common(p)
    p.add_argument("--team")
    p.add_argument("--from", dest="since", help="first day, YYYY-MM-DD (UTC)")
    p.add_argument("--to", dest="until", help="last day, YYYY-MM-DD (UTC)")
    p.add_argument("--by", default="team,model,day", help="grouping (default team,model,day)")
    p.add_argument("--format", choices=["table", "json", "jsonl", "csv"], default="table")
    p.add_argument("--events", action="store_true", help="export the usage events instead")
    p.set_defaults(func=usage)
