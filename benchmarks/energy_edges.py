"""A known 5 s burst between two idle periods: is its energy attributed to its own window?

Three consecutive windows (idle 3 s, burst 5 s, idle 3 s) with device-synchronised edges, read by the counter.
``misattributed_j``: energy above the idle baseline found in the two idle windows (energy that leaked out of the
burst's window), against a target of one counter period (0.1 s) of the burst's average power.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks._common import write_result
from benchmarks._gpu import idle, matmul_load
from distill_kit.energy.meter import EnergyMeter

COUNTER_PERIOD_S = 0.1


def main() -> None:
    torch.zeros(1, device="cuda")
    meter = EnergyMeter(interval_ms=20, use_codecarbon=False)
    with tempfile.TemporaryDirectory() as tmp:
        outer = meter.begin(Path(tmp), attempt=1)
        with meter.nested(outer, "baseline") as baseline:
            idle(6.0)
        with meter.nested(outer, "idle_before") as before:
            idle(3.0)
        with meter.nested(outer, "burst") as burst:
            matmul_load(5.0)
        with meter.nested(outer, "idle_after") as after:
            idle(3.0)
        meter.end(outer, "finished")
    idle_power = baseline["energy"]["gpu"]["energy_j"] / baseline["duration_s"]

    def excess(w: dict) -> float:
        return w["energy"]["gpu"]["energy_j"] - idle_power * w["duration_s"]

    burst_power = burst["energy"]["gpu"]["energy_j"] / burst["duration_s"]
    leak_before, leak_after = excess(before), excess(after)
    target = COUNTER_PERIOD_S * burst_power
    write_result(
        "energy_edges",
        {"misattributed_j": max(0.0, leak_before) + max(0.0, leak_after)},
        {"misattributed_j": f"<= {target:.0f}"},
        {"idle_power_w": idle_power, "burst_energy_j": burst["energy"]["gpu"]["energy_j"],
         "burst_avg_power_w": burst_power, "burst_duration_s": burst["duration_s"],
         "leak_before_j": leak_before, "leak_after_j": leak_after,
         "one_counter_period_j": target,
         "burst_cross_check": burst["energy"]["gpu"]["cross_check"]},
    )


if __name__ == "__main__":
    main()
