"""What ``distill-kit estimate`` predicts for a stage (shared by runner/estimate.py and runner/eval_estimate.py,
which the estimate calls for the eval stage: kept apart so neither imports the other back)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def stage_energy_j(summary: dict[str, Any]) -> float | None:
    values = [f["energy_j"] for f in summary["energy"].values() if f.get("energy_j") is not None]
    return sum(values) if values else None


@dataclass
class Interval:
    low: float
    mid: float
    high: float

    def scaled(self, factor: float) -> Interval:
        return Interval(self.low * factor, self.mid * factor, self.high * factor)


@dataclass
class StagePrediction:
    stage: str
    kind: str
    tokens: int | None  # the full run's tokens of this stage (None: not split over GPUs: prerun, eval)
    seconds: Interval
    energy_j: Interval | None
    basis: str  # how it was predicted
    breakdown: dict[str, Any] | None = None  # eval: per (model, task)

    def to_dict(self) -> dict[str, Any]:
        out = {"stage": self.stage, "kind": self.kind, "tokens": self.tokens, "seconds": asdict(self.seconds),
               "energy_j": asdict(self.energy_j) if self.energy_j else None, "basis": self.basis}
        return {**out, "eval": self.breakdown} if self.breakdown is not None else out
