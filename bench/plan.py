"""Command line → what one bench run does (full defaults, or the smoke's tiny ones)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import DIRECT
from bench.systems import BENCH, SystemSpec


@dataclass
class Plan:
    smoke: bool
    rounds: int
    duration: float
    warmup: float
    concurrency: list[int]
    rate: float
    open_duration: float
    drain: float
    stream_concurrency: int
    streams: int
    single_streams: int  # streams one at a time: the added TTFT without queueing (0: off)
    chunks: int
    gap_ms: float
    delay_ms: float
    profile_seconds: float
    profile_systems: list[str]
    profile_concurrency: int
    quiet_budget: float  # seconds, over the whole run, to wait for a quiet machine
    mem_conns: int  # idle keep-alive connections the memory probe holds (0: no probe)
    mem_streams: int  # streams it holds in flight
    soak_seconds: float  # long mode: the mixed soak's length (0: none)
    soak_system: str


def parse_args(argv: Sequence[str] | None, doc: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="seconds-long end-to-end check")
    p.add_argument("--systems", type=Path, default=BENCH / "systems.yaml")
    p.add_argument("--only", help="comma-separated system names (direct is always kept)")
    p.add_argument("--skip-litellm", action="store_true")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every scenario; report each system's least disturbed round")
    p.add_argument("--duration", type=float, help="seconds per closed-loop run (default 8)")
    p.add_argument("--warmup", type=float, help="seconds of unrecorded load before each run")
    p.add_argument("--concurrency", help="closed-loop concurrencies (default 1,16,64)")
    p.add_argument("--rate", type=float, help="open-loop req/s offered (default 1000)")
    p.add_argument("--open-duration", type=float, help="open-loop seconds (default 10)")
    p.add_argument("--stream-concurrency", type=int, help="concurrent streams (default 32)")
    p.add_argument("--streams", type=int, help="streams per system (default 32)")
    p.add_argument("--single-streams", type=int,
                   help="streams one at a time per system, before the concurrent ones "
                        "(default 8; 0: off)")
    p.add_argument("--chunks", type=int, help="mock: content events per stream (default 256)")
    p.add_argument("--gap-ms", type=float, help="mock: ms between events (default 10)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="mock: ms before responding")
    p.add_argument("--profile-seconds", type=float,
                   help="py-spy each --profile-systems under c=16 load (0: off; default 10)")
    p.add_argument("--profile-systems", default="turnout-everything,turnout-full,floor")
    p.add_argument("--mem-conns", type=int,
                   help="memory probe: idle keep-alive connections held (default 1000; 0: off)")
    p.add_argument("--mem-streams", type=int, help="memory probe: streams held (default 64)")
    p.add_argument("--long", action="store_true",
                   help="also a mixed soak (--soak-seconds, default 600) of --soak-system, "
                        "its RSS sampled throughout")
    p.add_argument("--soak-seconds", type=float)
    p.add_argument("--soak-system", default="turnout-everything")
    p.add_argument("--quiet-budget", type=float,
                   help="seconds in all to wait for other load on the machine to pass "
                        "before measurements (default 60; smoke 0)")
    p.add_argument("--turnout-src", type=Path,
                   help="run Turnout from this checkout (e.g. a `git archive` of a commit) "
                        "instead of the working tree")
    p.add_argument("--sut-core", type=int, default=1)
    p.add_argument("--aux-core", type=int, default=0)
    p.add_argument("--no-pin", action="store_true", help="let the scheduler place everything")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="results folder")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def make_plan(a: argparse.Namespace) -> Plan:
    smoke = bool(a.smoke)

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if smoke else full)

    conc = pick(a.concurrency, "1,16,64", "1,4")
    return Plan(
        smoke=smoke,
        rounds=max(1, a.rounds),
        duration=pick(a.duration, 8.0, 1.0),
        warmup=pick(a.warmup, 1.0, 0.0),
        concurrency=[int(c) for c in str(conc).split(",") if c.strip()],
        rate=pick(a.rate, 1000.0, 50.0),
        open_duration=pick(a.open_duration, 10.0, 1.0),
        drain=2.0 if smoke else 5.0,
        stream_concurrency=pick(a.stream_concurrency, 32, 2),
        streams=pick(a.streams, 32, 4),
        single_streams=pick(a.single_streams, 8, 2),
        chunks=pick(a.chunks, 256, 8),
        gap_ms=pick(a.gap_ms, 10.0, 5.0),
        delay_ms=a.delay_ms,
        profile_seconds=pick(a.profile_seconds, 10.0, 0.0),
        profile_systems=[s.strip() for s in a.profile_systems.split(",") if s.strip()],
        profile_concurrency=16,
        quiet_budget=pick(a.quiet_budget, 60.0, 0.0),
        mem_conns=pick(a.mem_conns, 1000, 20),
        mem_streams=pick(a.mem_streams, 64, 2),
        soak_seconds=(a.soak_seconds or 600.0) if a.long else 0.0,
        soak_system=a.soak_system,
    )


def select(specs: list[SystemSpec], a: argparse.Namespace) -> list[SystemSpec]:
    out = [s for s in specs if s.smoke or not a.smoke]
    if a.skip_litellm:
        out = [s for s in out if s.kind != "litellm"]
    if a.only:
        keep = {n.strip() for n in a.only.split(",")} | {DIRECT}
        out = [s for s in out if s.name in keep]
    return out
