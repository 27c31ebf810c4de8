"""The batch lane's parts, composed once (services.py calls `start_batch`): the blob
store, files and batches for the API, and, in a process that runs it, the lane with its
own pipeline built from the interactive one's stages."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.batch.batches import Batches
from gateway.batch.blobs import BlobStore, open_blobs
from gateway.batch.files import Files
from gateway.batch.finish import Finisher
from gateway.batch.headroom import Headroom
from gateway.batch.lane import Lane
from gateway.batch.lane_pipeline import lane_pipeline
from gateway.batch.line_run import LineRunner
from gateway.batch.progress import LaneMetrics
from gateway.config import Config
from gateway.pipeline import Pipeline
from gateway.store import Store
from gateway.telemetry import Telemetry
from policies.scoreboard import Scoreboard


@dataclass(slots=True)
class BatchSystem:
    blobs: BlobStore
    files: Files
    batches: Batches
    lane: Lane | None  # None: this process serves the API only

    async def stop(self) -> None:
        if self.lane is not None:
            await self.lane.stop()
        await self.blobs.close()


async def start_batch(cfg: Config, store: Store, pipeline: Pipeline, board: Scoreboard,
                      telemetry: Telemetry, *, run_lane: bool) -> BatchSystem:
    bc = cfg.batch
    blobs = await open_blobs(bc.storage)
    files = Files(store, blobs, bc)
    lane = None
    if run_lane:
        lane_pipe, held = lane_pipeline(pipeline, bc.price_factor)
        metrics = (LaneMetrics(telemetry.metrics.registry)
                   if telemetry.metrics is not None else None)
        lane = Lane(store, Finisher(store, files, bc), LineRunner(lane_pipe, held, bc),
                    Headroom(board, pipeline.registry, cfg), bc, metrics,
                    principal_ttl_s=cfg.auth.cache_ttl_s)
        lane.start()
    return BatchSystem(blobs, files, Batches(store, files, bc), lane)
