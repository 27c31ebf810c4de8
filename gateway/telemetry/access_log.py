"""One JSON access-log line per request, on the `turnout.access` logger (stderr by default).

An admitted request's line is its metering usage event, the record the ledger keeps
(request id, team, key id, model, deployment, status, latency, TTFT, tokens, cost, cache,
retries), so the log and the ledger never disagree. A request refused before admission
(400, 401, 404, 413, 429, ...) gets a shorter line. Neither ever holds a key, a prompt or a
completion: the key id names a key without revealing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

import orjson

from gateway.canonical import CanonicalRequest
from policies.keys import Principal

LOGGER = "turnout.access"


class AccessLog:
    def __init__(self) -> None:
        self.log = logging.getLogger(LOGGER)
        self._pending: list[str] = []
        self._plain: logging.StreamHandler[Any] | None = None
        if not self.log.handlers:
            # Bare JSON lines, whatever the root logger's format: log shippers parse them.
            self._plain = logging.StreamHandler(sys.stderr)
            self._plain.setFormatter(logging.Formatter("%(message)s"))
            self.log.addHandler(self._plain)
            self.log.propagate = False
        self.log.setLevel(logging.INFO)

    def _write(self, line: str) -> None:
        plain, log = self._plain, self.log
        if plain is not None and log.handlers == [plain] and log.isEnabledFor(logging.INFO):
            # Only our own bare handler: write the line as it would, without a LogRecord
            # and the caller lookup logging makes for each (most of its cost), and the
            # lines of one event-loop turn in one write (stderr writes each line at once).
            self._pending.append(line)
            if len(self._pending) == 1:
                try:
                    asyncio.get_running_loop().call_soon(self.flush)
                except RuntimeError:  # no loop (shutdown, a test): now
                    self.flush()
        else:  # handlers configured by the operator (or a test): the logging way
            log.info(line)

    def flush(self) -> None:
        plain = self._plain
        if plain is None or not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        with plain.lock or contextlib.nullcontext():
            plain.stream.write(text)
            plain.stream.flush()

    def settled(self, event: bytes, trace_id: str | None) -> None:
        if trace_id is not None:
            event = event[:-1] + b',"trace_id":"' + trace_id.encode() + b'"}'
        self._write(event.decode())

    def refused(self, rid: str, status: int, code: str | None, started: float,
                req: CanonicalRequest | None, principal: Principal | None,
                trace_id: str | None) -> None:
        elapsed = time.monotonic() - started
        line = {"request_id": rid, "time": round(time.time() - elapsed, 3),
                "team": principal.team if principal else None,
                "key_id": principal.key_id if principal else None,
                "model": req.model if req else None,
                "operation": req.operation if req else None,
                "status": status, "error": code,
                "latency_ms": round(elapsed * 1000, 2)}
        if trace_id is not None:
            line["trace_id"] = trace_id
        self._write(orjson.dumps(line).decode())
