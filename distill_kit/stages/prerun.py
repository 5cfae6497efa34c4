"""Prerun: the idle baseline every later stage's "energy above idle" subtracts, then a short burn-in.

The idle window comes first, on a quiet device (after the CUDA context exists, since that alone raises a GPU's
idle power: about 120 W with a context versus 75 W without on an H100); the burn-in then brings clocks and
temperature to a working state so the first measured stage does not pay for warming up.

Both power changes of the prerun (the context opening, the burn-in ending) are followed by ``SETTLE_S`` of quiet
before the next window edge: an energy counter read at an edge is interpolated inside its update step
(energy/counter_edges.py), exact when the power is steady across that step and off by up to a step's energy when
it jumps inside it. Ending the burn-in at ~700 W right at the stage's edge put 1.3% of a 5.8 s prerun in doubt on
an H200 (benchmarks/results/energy_coverage.json); a quiet edge costs a third of a second of idle power.
"""

from __future__ import annotations

import time
from typing import Any

from distill_kit.energy.accounting import idle_baseline, idle_power_uncertainty_w
from distill_kit.energy.counter_edges import SETTLE_S
from distill_kit.stages.base import StageContext, StageResult


def _burn_in(device: str, seconds: float) -> dict[str, Any]:
    import torch

    size = 4096 if device == "cuda" else 256
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    deadline = time.monotonic() + seconds
    iterations = 0
    while time.monotonic() < deadline:
        a = torch.tanh(a @ b)
        iterations += 1
        if device == "cuda" and iterations % 16 == 0:
            torch.cuda.synchronize()
    if device == "cuda":
        torch.cuda.synchronize()
        time.sleep(SETTLE_S)  # the stage's end edge on steady (idle) power, see the module doc
    return {"seconds": seconds, "matmul_size": size, "iterations": iterations}


class PrerunStage:
    kind = "prerun"

    def setup(self, ctx: StageContext) -> None:
        self.ctx = ctx
        energy = ctx.manifest.settings.energy
        self.idle_s = energy.idle_seconds
        self.burn_in_s = energy.burn_in_seconds

    def run(self) -> StageResult:
        if self.ctx.device == "cuda":
            import torch

            torch.zeros(1, device="cuda")  # open the context before measuring idle
            torch.cuda.synchronize()
            time.sleep(SETTLE_S)
        self.ctx.progress.log(f"prerun: measuring idle power for {self.idle_s:g} s")
        with self.ctx.measure("idle") as idle:
            time.sleep(self.idle_s)
        idle_power = {domain: (figure["energy_j"] / idle["duration_s"]
                               if figure["energy_j"] is not None and idle["duration_s"] > 0 else None)
                      for domain, figure in idle["energy"].items()}
        baseline = idle_baseline(idle.get("load"))
        if baseline is not None and not baseline["valid"]:
            self.ctx.progress.log(f"[yellow]prerun: idle baseline invalid: {baseline['reason']}; "
                                  "energy above idle will not be reported[/yellow]")
        burn_in = _burn_in(self.ctx.device, self.burn_in_s) if self.burn_in_s > 0 else None
        outputs: dict[str, Any] = {
            "idle_power_w": idle_power,
            "idle_power_uncertainty_w": idle_power_uncertainty_w(idle),
            "idle_methods": {d: f["method"] for d, f in idle["energy"].items()},
            "windows": [idle],
            "burn_in": burn_in,
        }
        if baseline is not None:
            outputs["idle_baseline"] = baseline
        return StageResult(tokens=0, token_kind="none", outputs=outputs)

    def cleanup(self) -> None:
        pass
