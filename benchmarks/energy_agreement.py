"""Counter energy vs the integral of polled instant power, over >= 10 s windows (the kit's own meter).

Figures: ``max_rel_gap_load`` (largest |integrated - counter| / counter over the loaded windows: steady matmul,
50% duty cycle, training steps) and ``rel_gap_idle`` (the same for an idle window with a CUDA context open).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks._common import write_result
from benchmarks._gpu import idle, matmul_load
from distill_kit.energy.meter import EnergyMeter

WINDOW_S = 12.0


def window(meter: EnergyMeter, folder: Path, label: str, work) -> dict:
    w = meter.begin(folder / label, attempt=1)
    work()
    record = meter.end(w, "finished")
    gpu = record.energy["gpu"]
    return {"label": label, "duration_s": record.duration_s, "method": gpu.method, "counter_j": gpu.energy_j,
            "integrated_j": gpu.cross_check.energy_j if gpu.cross_check else None,
            "rel_gap": gpu.cross_check.rel_gap if gpu.cross_check else None, "avg_power_w": gpu.avg_power_w,
            "peak_power_w": gpu.peak_power_w, "samples": record.samples, "coverage": record.coverage}


def main() -> None:
    torch.zeros(1, device="cuda")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for interval in (100, 20):
            meter = EnergyMeter(interval_ms=interval, use_codecarbon=False)
            folder = Path(tmp) / str(interval)
            results[interval] = [
                window(meter, folder, "steady", lambda: matmul_load(WINDOW_S)),
                window(meter, folder, "duty50", lambda: matmul_load(WINDOW_S, duty=0.5)),
                window(meter, folder, "idle", lambda: idle(WINDOW_S)),
            ]
    loaded = [w for w in results[100] if w["label"] != "idle"]
    idle_window = next(w for w in results[100] if w["label"] == "idle")
    write_result(
        "energy_agreement",
        {"max_rel_gap_load": max(abs(w["rel_gap"]) for w in loaded), "rel_gap_idle": idle_window["rel_gap"]},
        {"max_rel_gap_load": "<= 0.02"},
        {"window_s": WINDOW_S, "interval_100ms": results[100], "interval_20ms": results[20],
         "definition": "rel_gap = (trapezoid integral of NVML instant power polled by the sampler process - "
                       "energy counter delta at synchronised edges) / counter delta"},
    )


if __name__ == "__main__":
    main()
