"""The `batch:` section of the config (gateway/config/ holds it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Strict):
    """Where file contents live: a local folder (one machine: every worker of one
    `turnout serve` and its batch workers), or an S3-compatible bucket (a fleet)."""

    kind: Literal["local", "s3"] = "local"
    path: str | None = Field(None, description="local: default <temp dir>/turnout-files")
    bucket: str | None = Field(None, description="s3: required")
    prefix: str = "turnout/files/"
    endpoint_url: str | None = Field(None, description="s3: an S3-compatible server; unset: AWS")
    region: str | None = None
    access_key_id: str | None = Field(None, description="as ${ENV}; unset: the AWS chain")
    secret_access_key: str | None = Field(None, description="as ${ENV}")

    @model_validator(mode="after")
    def _bucket(self) -> StorageConfig:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("bucket: required for kind s3")
        return self


class SpillConfig(_Strict):
    """Near its deadline, a batch whose pool stays busy may run on an on-demand model."""

    after: float = Field(0.75, gt=0, le=1, description=(
        "the share of the completion window after which lines may spill"))
    models: dict[str, str] = Field({}, description=(
        "model → the model its lines spill to (e.g. a provider-only model); none: no spill"))
    in_flight: int = Field(16, ge=1, description="spilled lines at once, per process")


class BatchConfig(_Strict):
    enabled: bool = Field(True, description="serve /v1/files and /v1/batches")
    run_in_serve: bool = Field(True, description=(
        "run the lane inside `turnout serve` (each worker); false: `turnout batch-worker`"))
    max_file_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="per uploaded file")
    max_lines: int = Field(50_000, ge=1, description="per batch")
    completion_window_s: float = Field(86400, gt=0, description=(
        "what `completion_window: 24h` means (shorter only for tests)"))
    price_factor: float = Field(0.5, ge=0, le=1, description=(
        "batch lines cost this share of the deployment's price"))
    priority: int = Field(-100, description="the lines' priority: below every team's")
    fill: float = Field(0.75, gt=0, le=1, description=(
        "the share of a pool's capacity (sequences, KV cache) that batch lines may fill up"
        " to, interactive traffic included"))
    reserve: float = Field(0.15, ge=0, lt=1, description=(
        "the share of each replica's capacity kept free for interactive bursts: no lines"
        " while a replica has fewer free slots (0: only while requests queue)"))
    ttft_fraction: float = Field(0.5, gt=0, le=1, description=(
        "no lines while the pool's predicted interactive P99 TTFT exceeds this share of"
        " the SLO (in `turnout batch-worker` only the predicted queue wait: it sees no"
        " interactive first tokens)"))
    preempt: bool = Field(True, description=(
        "when interactive load takes a replica's reserve, cancel as many lines as the"
        " reserves lack (run again later, not metered)"))
    max_in_flight: int = Field(256, ge=1, description="lines at once, per process")
    max_new_per_tick: int = Field(8, ge=1, description=(
        "new lines per model per tick at most: refills come in small steps, not bursts"))
    provider_in_flight: int = Field(8, ge=1, description=(
        "lines at once on models with no self-hosted pool, per process"))
    lease_s: float = Field(60, gt=0, description=(
        "a line's lease, renewed while it runs: how soon a dead lane's lines run again"))
    tick_s: float = Field(0.1, gt=0, le=1, description="the scheduler's period")
    max_line_attempts: int = Field(3, ge=1, description=(
        "tries of a line that fails upstream (5xx) before its error is its result"))
    storage: StorageConfig = StorageConfig()  # type: ignore[call-arg]
    spill: SpillConfig = SpillConfig()  # type: ignore[call-arg]
