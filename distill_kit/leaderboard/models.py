"""The JSON the leaderboard's API answers with (pydantic models: they are also its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class KeyOut(BaseModel):
    key_id: str
    team: str
    added_at: datetime
    revoked: bool
    revoked_at: datetime | None = None
    revoked_reason: str | None = None


class KeyIn(BaseModel):
    team: str = Field(min_length=1, max_length=200)
    public_key_pem: str = Field(min_length=1, max_length=8192, description="Ed25519 public key (PEM, as "
                                "`distill-kit keygen` writes PREFIX.pub)")


class RevokeIn(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class Tier(BaseModel):
    energy: Literal["measured", "estimated", "unmeasured"] = Field(description="measured: every figure from a "
                                                                   "counter or integrated power (NVML, RAPL)")
    containerised: bool
    methods: list[str]
    label: str


class EntryOut(BaseModel):
    """One accepted bundle as the ranking lists it."""

    bundle_sha256: str
    team: str
    key_id: str
    submitted_at: datetime
    name: str
    pipeline: str
    student_params_b: float | None
    total_energy_j: float | None = Field(description="gross energy of every stage, teacher included (J)")
    energy_above_idle_j: float | None
    teacher_energy_j: float | None
    wall_time_s: float | None
    j_per_trained_token: float | None
    tier: Tier
    scores: dict[str, dict[str, float]] = Field(description="model -> task -> score")
    size_bytes: int
    url: str
    bundle_url: str


class EntryDetail(EntryOut):
    stages: list[dict[str, Any]] = Field(description="per stage: time, tokens, energy by domain with method")
    eval_tasks: list[dict[str, Any]] = Field(description="per (model, task) evaluation window: score and energy")
    summary: dict[str, Any]
    verify_report: dict[str, Any]


class EntryList(BaseModel):
    count: int
    entries: list[EntryOut]


class TaskCount(BaseModel):
    task: str
    entries: int


class ParetoPoint(BaseModel):
    bundle_sha256: str
    name: str
    team: str
    total_energy_j: float
    quality: float
    on_frontier: bool


class ParetoOut(BaseModel):
    task: str
    points: list[ParetoPoint]
    frontier: list[str] = Field(description="bundle sha256s on the frontier, by increasing energy")


class CheckOut(BaseModel):
    name: str
    status: Literal["PASS", "WARN", "FAIL"]
    reason: str


class SubmissionOut(BaseModel):
    status: Literal["accepted", "rejected"]
    reason: str
    duplicate: bool = False
    bundle_sha256: str | None = None
    entry: EntryOut | None = None
    failed_checks: list[CheckOut] = Field(default_factory=list)
    verify_report: dict[str, Any] | None = None


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    entries: int
    verifications_in_flight: int
