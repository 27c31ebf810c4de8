"""The batch lane's store operations (gateway/batch), part of the `Store` interface.

A batch is a HASH record (status, counts, usage, timestamps) with a line queue beside it,
all under its team's hash tag: lines never taken are the range [next, total) of the
record, lines given back wait in a LIST, lines being run sit in a ZSET of leases
("<index>:<token>" → expiry, ms), and results in a HASH by `custom_id`, written only if
absent. A lane takes lines with a lease it renews while it runs them; a lease that lapses
(its lane died) hands its lines to the next taker. So every line runs at least once, and
its result and its settlement are written together, once: `batch_line` applies a line's
settlement in the same atomic step that writes its first result, and only then, so a line
redone after a crash (or run twice after a lease lapsed under a slow lane) is metered
exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # base.py builds the Store interface on this one
    from gateway.store.base import SettleArgs

# A batch in one of these takes no more lines; its late results are not written.
OPEN = ("in_progress", "cancelling")


@dataclass(slots=True)
class Taken:
    """What `batch_take` handed out: lease members ("<index>:<token>"), and how many lines
    are held by leases that have not lapsed and how many are left to take (after it)."""

    members: list[str] = field(default_factory=list)
    running: int = 0
    pending: int = 0

    @property
    def indexes(self) -> list[int]:
        return [member_index(m) for m in self.members]


def member_index(member: str) -> int:
    return int(member.partition(":")[0])


@dataclass(slots=True)
class LineEnd:
    """How a leased line ends: with its result (`result` set: the output or error file's
    line), or given back to be run again (`result` empty). `settle`: the settlement of
    the attempt that produced it (None: it was refused before admission, nothing to
    settle), applied only with the line's first result; otherwise only its part of the
    budget reservation goes back."""

    team: str
    batch_id: str
    member: str  # the lease it ran under
    custom_id: str
    result: bytes = b""
    failed: bool = False
    settle: SettleArgs | None = None


class BatchQueue(Protocol):
    async def batch_create(self, team: str, batch_id: str, record: Mapping[str, bytes],
                           created_ms: int) -> None:
        """A new batch record, listed in the team's batches (one atomic step)."""
        ...

    async def batch_ids(self, team: str, after: str | None, limit: int) -> list[str]:
        """The team's batch ids, newest first, those after `after` (an id) only."""
        ...

    async def batch_update(self, team: str, batch_id: str, expect: Sequence[str],
                           fields: Mapping[str, bytes], *, claim_ms: int = 0) -> bool:
        """Set `fields` if the batch's status is one of `expect`; `claim_ms` > 0: only if
        no other claim is current, and claim it for that long. Whether it was set."""
        ...

    async def batch_take(self, team: str, batch_id: str, count: int, lease_ms: int,
                         token: str) -> Taken:
        """Up to `count` lines of an `in_progress` batch, leased for `lease_ms`: lapsed
        leases first, then lines given back, then lines never taken."""
        ...

    async def batch_renew(self, team: str, batch_id: str, members: Sequence[str],
                          lease_ms: int) -> None:
        """Extend the leases still held to `lease_ms` from now."""
        ...

    async def batch_line(self, end: LineEnd) -> bool:
        """End a leased line (atomically, see the module's docstring); True when it wrote
        the line's first result."""
        ...

    async def batch_drop(self, team: str, batch_id: str) -> None:
        """Forget a finished batch's queue and results (its files hold them now)."""
        ...

    async def batch_activate(self, team: str, batch_id: str, created_ms: int) -> None:
        """List a batch for the lanes to run (before its record exists: a batch whose
        creation died half-way is found, and dropped, by the lanes)."""
        ...

    async def batch_deactivate(self, team: str, batch_id: str) -> None: ...

    async def batch_active(self) -> list[tuple[str, str, int]]:
        """Every listed batch: (team, batch id, created ms), oldest first."""
        ...
