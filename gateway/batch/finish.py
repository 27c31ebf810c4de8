"""A batch's two steps outside its lines, each done by one lane at a time (a claim on the
record that lapses if that lane dies, so another takes over) and safe to run again:

- validation: its input file checked whole; `in_progress` with its line count, or
  `failed` with OpenAI's `errors`;
- finalization: its results written as the output and error files (ids derived from the
  batch's, so a second run writes the same files), then `completed`, `expired` (lines
  that never ran are in the error file as `batch_expired`) or `cancelled`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from gateway.batch import lines
from gateway.batch.batches import text
from gateway.batch.files import Files, derived_file_id
from gateway.batch.lines import InputFile
from gateway.batch.settings import BatchConfig
from gateway.store import Store, layout

log = logging.getLogger("turnout.batch")

ENDED_AT = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}
_EXPIRED = "This request could not be executed before the completion window expired."


def _now() -> bytes:
    return str(int(time.time())).encode()


class Finisher:
    def __init__(self, store: Store, files: Files, cfg: BatchConfig) -> None:
        self.store = store
        self.files = files
        self.cfg = cfg
        self.claim_ms = int(cfg.lease_s * 1000)

    async def load(self, team: str, record: dict[str, bytes]
                   ) -> tuple[InputFile, list[dict[str, Any]]]:
        file_id, endpoint = text(record, "input_file_id") or "", text(record, "endpoint") or ""
        try:
            data = await self.files.read(team, file_id)
        except FileNotFoundError:
            return InputFile(b"", [], None), [{"code": "file_not_found", "line": None,
                                               "message": "the input file was deleted",
                                               "param": "input_file_id"}]
        return lines.parse_input(data, endpoint, self.cfg.max_lines)

    async def validate(self, team: str, batch_id: str) -> InputFile | None:
        """The batch's input, once it is `in_progress` (None: another lane has the claim,
        or the file cannot run and the batch failed)."""
        if not await self.store.batch_update(team, batch_id, ["validating"], {},
                                             claim_ms=self.claim_ms):
            return None
        record = await self.store.hgetall(layout.batch(team, batch_id))
        parsed, errors = await self.load(team, record)
        if errors:
            if await self.store.batch_update(team, batch_id, ["validating"], {
                    "status": b"failed", "failed_at": _now(), "errors": orjson.dumps(errors),
                    "claim": b"0"}):
                await self.store.batch_deactivate(team, batch_id)
            return None
        await self.store.batch_update(team, batch_id, ["validating"], {
            "status": b"in_progress", "in_progress_at": _now(), "claim": b"0",
            "total": b"%d" % len(parsed.spans), "model": (parsed.model or "").encode()})
        return parsed

    async def finalize(self, team: str, batch_id: str, ending: str, expect: list[str],
                       parsed: InputFile | None) -> bool:
        """Write the files and end the batch as `ending`, if it is in one of `expect` (or
        `finalizing` with no current claim). Whether this lane did it."""
        ok = await self.store.batch_update(
            team, batch_id, [*expect, "finalizing"],
            {"status": b"finalizing", "ending": ending.encode(), "finalizing_at": _now()},
            claim_ms=self.claim_ms)
        if not ok:
            return False
        record = await self.store.hgetall(layout.batch(team, batch_id))
        ending = text(record, "ending") or ending  # a takeover ends it as first decided
        results = await self.store.hgetall(layout.batch_results(team, batch_id))
        rows = sorted((int(i), flag == b"1", cid, line) for cid, (i, flag, line) in
                      ((c, v.split(b" ", 2)) for c, v in results.items()))
        output = [line for _, failed, _, line in rows if not failed]
        errors = [line for _, failed, _, line in rows if failed]
        if ending == "expired":
            if parsed is None:
                parsed, _ = await self.load(team, record)
            for index in range(len(parsed.spans)):
                custom_id = parsed.line(index).custom_id
                if custom_id not in results:
                    errors.append(lines.never_ran(lines.request_id(batch_id, custom_id),
                                                  custom_id, "batch_expired", _EXPIRED))
        fields = {"status": ending.encode(), ENDED_AT[ending]: _now(), "claim": b"0"}
        for kind, body in (("output", output), ("error", errors)):
            if body:
                file_id = derived_file_id(batch_id, kind)
                await self.files.put(team, file_id, f"{batch_id}_{kind}.jsonl",
                                     b"\n".join(body) + b"\n")
                fields[f"{kind}_file_id"] = file_id.encode()
        if await self.store.batch_update(team, batch_id, ["finalizing"], fields):
            await self.store.batch_drop(team, batch_id)
            await self.store.batch_deactivate(team, batch_id)
            log.info("batch %s of team %s %s: %d results, %d errors", batch_id, team,
                     ending, len(output), len(errors))
        return True
