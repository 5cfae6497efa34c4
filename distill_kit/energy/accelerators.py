"""The physical envelope of the machines the kit measures: what a board or a CPU can draw and compute.

The figures live in ``accelerators.json`` beside this module, each row with its sources (datasheets, our own
measurements); this module only looks rows up. verify's ``physics`` check holds every bundle to them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("accelerators.json")
KIT_DTYPES = ("bf16", "fp16", "fp32")  # the kit computes in these at most (never fp8, never 2:4 sparsity)


@dataclass(frozen=True)
class GpuModel:
    model: str
    power_limit_w: tuple[float, float]  # settable range
    idle_floor_w: float
    memory_gib: float | None
    peak_flops: float  # the highest dense figure over KIT_DTYPES
    pci_device_ids: tuple[str, ...]


@dataclass(frozen=True)
class CpuPeak:
    flops: float
    flop_per_cycle: int
    isa: str
    mhz: float
    mhz_source: str  # "fingerprint" or "ceiling"


@cache
def table() -> dict[str, Any]:
    return json.loads(TABLE_PATH.read_text())


def _row(row: dict[str, Any]) -> GpuModel:
    peaks = [row["peak_flops"][d] for d in KIT_DTYPES if row["peak_flops"].get(d)]
    return GpuModel(row["model"], (float(row["power_limit_w"][0]), float(row["power_limit_w"][1])),
                    float(row["idle_floor_w"]), row.get("memory_gib"), max(peaks),
                    tuple(i.lower() for i in row["pci_device_ids"]))


def gpu_by_name(name: str) -> GpuModel | None:
    for row in table()["gpus"]:
        if any(re.search(pattern, name, re.IGNORECASE) for pattern in row["name_regex"]):
            return _row(row)
    return None


def gpu_by_pci_id(device_id: str) -> GpuModel | None:
    wanted = device_id.lower()
    for row in table()["gpus"]:
        if wanted in (i.lower() for i in row["pci_device_ids"]):
            return _row(row)
    return None


def cpu_isa(flags: list[str] | None) -> str:
    """The widest vector ISA the flags show (the table's key for FLOP per cycle)."""
    present = set(flags or [])
    if "amx_bf16" in present:
        return "amx_bf16"
    if "avx512f" in present:
        return "avx512f"
    if {"avx2", "fma"} <= present:
        return "avx2+fma"
    for arm in ("sve", "asimd"):
        if arm in present:
            return arm
    return "other"


def cpu_peak(cpu: dict[str, Any]) -> CpuPeak:
    """An upper bound on the CPU's FLOP/s: logical cores x maximum clock x FLOP per cycle of its widest ISA.

    Without flags the widest ISA in the table is assumed; without a maximum clock, the table's ceiling.
    """
    spec = table()["cpu"]
    per_cycle = spec["flop_per_cycle_per_logical_core"]
    flags = cpu.get("flags")
    isa = cpu_isa(flags) if flags is not None else max(per_cycle, key=per_cycle.get)
    mhz = cpu.get("max_mhz")
    source = "fingerprint" if mhz else "ceiling"
    mhz = float(mhz or spec["max_clock_mhz_ceiling"])
    cores = int(cpu.get("logical_cores") or 1)
    return CpuPeak(cores * mhz * 1e6 * per_cycle[isa], per_cycle[isa], isa, mhz, source)


def cpu_power_max_w(cpu: dict[str, Any]) -> float:
    return float(table()["cpu"]["package_power_w_per_logical_core_max"]) * int(cpu.get("logical_cores") or 1)


def ram_power_min_w(memory_gib: float | None) -> float | None:
    return float(table()["cpu"]["ram_power_w_per_gib_min"]) * memory_gib if memory_gib else None
