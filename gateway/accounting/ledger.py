"""Reading the ledger: per-team per-day rollups and the usage event streams, as rows for
the admin API and `turnout usage`, exported as JSON, JSONL or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

import orjson

from gateway.store import Store, layout
from gateway.store.base import ROLLUP_METRICS
from policies.budgets import to_usd

DIMENSIONS = ("team", "model", "day")
_PAGE = 1000


async def rollups(store: Store, teams: Iterable[str], *, since: str = "", until: str = "",
                  by: tuple[str, ...] = DIMENSIONS) -> list[dict[str, Any]]:
    """Summed rollups grouped by `by` (a subset of DIMENSIONS), days in [since, until]."""
    groups: dict[tuple[str, ...], dict[str, int]] = {}
    for team in teams:
        for name, value in (await store.hgetall(layout.rollup(team))).items():
            day, rest = name[:10], name[11:]  # "<YYYY-MM-DD>|<model>|<metric>"
            model, _, metric = rest.rpartition("|")
            if (since and day < since) or (until and day > until):
                continue
            dims = {"team": team, "model": model, "day": day}
            sums = groups.setdefault(tuple(dims[d] for d in by), dict.fromkeys(ROLLUP_METRICS, 0))
            sums[metric] = sums.get(metric, 0) + int(value)
    out = []
    for key, metrics in sorted(groups.items()):
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row.update(metrics)
        row["cost_usd"] = to_usd(row.pop("cost_nanos"))
        row["saved_cost_usd"] = to_usd(row.pop("saved_cost_nanos"))  # by cache hits
        out.append(row)
    return out


async def events(store: Store, teams: Iterable[str], *, after: str | None = None,
                 limit: int | None = None) -> list[dict[str, Any]]:
    """Usage events, oldest first per team; `after` (a stream id) pages one team's stream."""
    out: list[dict[str, Any]] = []
    for team in teams:
        cursor = after
        while limit is None or len(out) < limit:
            page = await store.xrange(layout.events(team), cursor, _PAGE)
            out += [{"id": eid, **orjson.loads(raw)} for eid, raw in page]
            if len(page) < _PAGE:
                break
            cursor = page[-1][0]
    return out if limit is None else out[:limit]


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(orjson.dumps(r).decode() + "\n" for r in rows)


def export(rows: list[dict[str, Any]], fmt: str) -> tuple[bytes, bytes]:
    """(body, content type) for `json`, `jsonl` or `csv`."""
    if fmt == "csv":
        return to_csv(rows).encode(), b"text/csv; charset=utf-8"
    if fmt == "jsonl":
        return to_jsonl(rows).encode(), b"application/x-ndjson"
    return orjson.dumps({"object": "list", "data": rows}), b"application/json"
