"""``physics``: every figure fits the physical envelope of the machine the fingerprint names.

The envelope is the accelerator table (distill_kit/energy/accelerators.json, each row with its sources), not what
the submitter declared: (1) each GPU is looked up (PCI device id, then name); a declared power limit outside the
board's settable range fails, an unknown board is a WARN; (2) each attempt's (and nested window's) average GPU
power lies between the boards' idle floors and their maximum limits + 10%; (3) no power sample stays above the
maximum limit + 10% for a second; (4) CPU package power stays under the table's ceiling per logical core and RAM
power above its floor per GiB; (5) no stage ran faster than its FLOPs allow at the summed peak of its devices, and
(6) no stage's GPU energy is below its FLOPs at the best FLOP per joule the boards permit (peak over idle floor).

FLOPs are lower bounds: 2 N per forward token (teacher logits, generation) and 6 N per trained token (KD, SFT),
N = the model's parameters less its input embedding, attention FLOPs left out (they only add).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distill_kit.bundle.checks.machine import SUSTAINED_S, max_sustained_w
from distill_kit.bundle.context import VerifyContext, Warn
from distill_kit.energy import accelerators
from distill_kit.errors import VerificationError

LIMIT_MARGIN = 1.10  # as plausibility: limits hold for 1 s averages, within 10%
MIN_WINDOW_S = 2.0  # the NVML counter advances about every 100 ms: shorter windows are not held to the floor
PARAMS_B_BAND = (0.5, 2.0)  # the manifest's params_b is a rounded size (OLMo-2-0425-1B: 1.48 B parameters)
FLOPS_PER_TOKEN = {"teacher_logits": ("teacher", 2.0), "teacher_generation": ("teacher", 2.0),
                   "kd": ("student", 6.0), "sft": ("student", 6.0)}


class ShapeMismatch(Exception):
    """A recorded model shape far from the size the manifest states for the model."""


@dataclass
class _Found:
    fail: list[str] = field(default_factory=list)
    warn: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Machine:
    boards: dict[int, accelerators.GpuModel]
    unknown: list[str]
    cpu: accelerators.CpuPeak

    @property
    def gpu_floor_w(self) -> float:
        return sum(b.idle_floor_w for b in self.boards.values())

    @property
    def gpu_max_w(self) -> float:
        return sum(b.power_limit_w[1] for b in self.boards.values())

    @property
    def gpu_peak(self) -> float:
        return sum(b.peak_flops for b in self.boards.values())


def _board(gpu: dict[str, Any], found: _Found) -> accelerators.GpuModel | None:
    by_name = accelerators.gpu_by_name(gpu["name"])
    pci = gpu.get("pci_device_id")
    by_pci = accelerators.gpu_by_pci_id(pci) if pci else None
    label = f"gpu{gpu['index']} ({gpu['name']})"
    if by_pci and by_name and by_pci.model != by_name.model:
        found.fail.append(f"{label}: its PCI device id {pci} is a {by_pci.model} (got the name {gpu['name']!r}, "
                          f"expected a {by_pci.model})")
    board = by_pci or by_name
    if board is None:
        found.warn.append(f"{label}: not in the accelerator table, its power and FLOPs are not bounded")
        return None
    if pci is None:
        found.warn.append(f"{label}: no PCI device id recorded (older kit): identified by its name only")
    low, high = board.power_limit_w
    limit = gpu["power_limit_w"]
    if limit is not None and not low <= limit <= high:
        found.fail.append(f"{label}: declared power limit outside the {board.model}'s settable range (got "
                          f"{limit:g} W, expected {low:g}-{high:g} W)")
    if board.memory_gib and abs(gpu["memory_gib"] - board.memory_gib) > 0.1 * board.memory_gib:
        found.warn.append(f"{label}: {gpu['memory_gib']:g} GiB of memory, the {board.model} has "
                          f"{board.memory_gib:g} GiB")
    return board


def _machine(fingerprint: dict[str, Any], found: _Found) -> _Machine:
    boards, unknown = {}, []
    for gpu in fingerprint["gpus"]:
        board = _board(gpu, found)
        if board is None:
            unknown.append(gpu["name"])
        else:
            boards[gpu["index"]] = board
    cpu = fingerprint["cpu"]
    if "flags" not in cpu or "max_mhz" not in cpu:
        found.warn.append("the fingerprint records no CPU flags or maximum clock (older kit): the CPU's peak "
                          "assumes its widest ISA at the table's clock ceiling")
    return _Machine(boards, unknown, accelerators.cpu_peak(cpu))


def _windows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    stage = summary["stage"]
    out = [(f"{stage} attempt {a['attempt']}", a) for a in summary["attempts"]]
    out += [(f"{stage} window {w.get('label', i)}", w) for i, w in enumerate(summary["outputs"].get("windows") or [])]
    return out


def _power(label: str, record: dict[str, Any], machine: _Machine, fingerprint: dict[str, Any],
           found: _Found) -> None:
    """(2) and (4): average power per window within the table's bounds."""
    duration = record["duration_s"]
    if duration < MIN_WINDOW_S:
        return
    energy = record["energy"]
    gpu_j = energy["gpu"]["energy_j"]
    if gpu_j is not None and machine.boards and not machine.unknown:
        average = gpu_j / duration
        if average < machine.gpu_floor_w:
            found.fail.append(f"{label}: average GPU power below the boards' idle floor (got {average:.1f} W, "
                              f"expected >= {machine.gpu_floor_w:g} W)")
        elif average > machine.gpu_max_w * LIMIT_MARGIN:
            found.fail.append(f"{label}: average GPU power above the boards' maximum limit + 10% (got "
                              f"{average:.1f} W, expected <= {machine.gpu_max_w * LIMIT_MARGIN:g} W)")
    cpu_j = energy["cpu"]["energy_j"]
    cpu_max = accelerators.cpu_power_max_w(fingerprint["cpu"])
    if cpu_j is not None and cpu_j / duration > cpu_max:
        found.fail.append(f"{label}: average CPU power above the table's ceiling for "
                          f"{fingerprint['cpu']['logical_cores']} logical cores (got {cpu_j / duration:.1f} W, "
                          f"expected <= {cpu_max:g} W)")
    ram_j = energy["ram"]["energy_j"]
    ram_min = accelerators.ram_power_min_w(fingerprint["memory_gib"])
    if ram_j is not None and ram_min and ram_j / duration < ram_min:
        found.fail.append(f"{label}: average RAM power below the refresh floor of {fingerprint['memory_gib']:g} "
                          f"GiB (got {ram_j / duration:.3f} W, expected >= {ram_min:.3f} W)")


def _samples(stage: str, trace: Any, machine: _Machine, found: _Found) -> None:
    """(3) no sustained power sample above the board's maximum limit + 10%."""
    for index, board in machine.boards.items():
        power = trace.values(f"gpu{index}_power_w")
        sustained = max_sustained_w(power)
        ceiling = board.power_limit_w[1] * LIMIT_MARGIN
        if sustained is not None and sustained > ceiling:
            found.fail.append(f"{stage}: gpu{index} power above the {board.model}'s maximum limit + 10% for "
                              f"{SUSTAINED_S:g} s (got {sustained:.1f} W, expected <= {ceiling:g} W)")


def _builtin_shape(ref: dict[str, Any] | None) -> dict[str, Any] | None:
    """The shape of a builtin model from the kit's own copy (asset_path checks the sha256 the manifest pins)."""
    from distill_kit.assets.resolve import asset_path
    from distill_kit.runner.evidence import model_shape

    if not ref or ref.get("source") != "builtin":
        return None
    try:
        return model_shape(asset_path(ref))
    except Exception:  # noqa: BLE001 - a builtin this kit does not ship (or with another hash): use the record
        return None


def stage_flops(summary: dict[str, Any], models: dict[str, Any] | None = None) -> tuple[float | None, str]:
    """A lower bound on the FLOPs the stage's counted tokens needed, and how it was counted (or why not).

    The model's shape is the kit's own copy for builtin models (``models``: the manifest's references), else the
    shape the stage recorded."""
    rule = FLOPS_PER_TOKEN.get(summary["kind"])
    if rule is None or not summary["tokens"]:
        return None, "no model FLOPs counted for this kind of stage"
    role, factor = rule
    ref = (models or {}).get(role) or {}
    shape = _builtin_shape(ref) or ((summary["outputs"].get("compute") or {}).get("models") or {}).get(role)
    if not isinstance(shape, dict) or not isinstance(shape.get("parameters"), int):
        return None, f"the {role} model's shape is not recorded"
    stated = ref.get("params_b")
    if stated and not PARAMS_B_BAND[0] <= shape["parameters"] / (stated * 1e9) <= PARAMS_B_BAND[1]:
        raise ShapeMismatch(f"{summary['stage']}: the recorded {role} shape does not fit the model the manifest "
                            f"names ({ref.get('id')}) (got {shape['parameters']:,} parameters, expected about "
                            f"{stated:g} B)")
    matmul = shape["parameters"] - int(shape.get("embedding_parameters") or 0)
    return factor * matmul * summary["tokens"], f"{factor:g} x {matmul:,} x {summary['tokens']:,} tokens"


def _speed(summary: dict[str, Any], models: dict[str, Any], machine: _Machine, found: _Found) -> None:
    """(5) and (6): time and GPU energy at least what the FLOPs need at the devices' peak and best efficiency."""
    try:
        flops, how = stage_flops(summary, models)
    except ShapeMismatch as err:
        found.fail.append(str(err))
        return
    stage = summary["stage"]
    if flops is None:
        if summary["kind"] in FLOPS_PER_TOKEN and summary["tokens"]:
            found.warn.append(f"{stage}: FLOPs not bounded ({how})")
        return
    device = (summary["outputs"].get("compute") or {}).get("device")
    if machine.unknown and device != "cpu":
        found.warn.append(f"{stage}: FLOPs not bounded (GPU not in the table)")
        return
    peak = machine.cpu.flops + (0.0 if device == "cpu" else machine.gpu_peak)
    seconds = sum(a["duration_s"] for a in summary["attempts"])
    fastest = flops / peak
    if seconds < fastest:
        found.fail.append(f"{stage}: faster than its FLOPs allow at the devices' peak of {peak / 1e12:,.1f} "
                          f"TFLOP/s ({how}) (got {seconds:.2f} s, expected >= {fastest:.2f} s)")
        return
    found.notes.append(f"{stage} at {100 * fastest / seconds:.2g}% of peak")
    gpu_j = summary["energy"]["gpu"]["energy_j"]
    if device != "cpu" and gpu_j is not None and machine.boards:
        least = flops * machine.gpu_floor_w / machine.gpu_peak
        if gpu_j < least:
            found.fail.append(f"{stage}: GPU energy below its FLOPs at the boards' best FLOP per joule (peak over "
                              f"idle floor) (got {gpu_j:.1f} J, expected >= {least:.1f} J)")


class Physics:
    """Every figure fits the physical envelope of the recorded machine from the accelerator table, not from what
    the submitter declared: power between each board's idle floor and its maximum limit, a declared limit within
    the board's range, and no stage faster or cheaper than its FLOPs allow."""

    name = "physics"

    def check(self, ctx: VerifyContext) -> str | Warn:
        fingerprint = ctx.fingerprint()
        found = _Found()
        machine = _machine(fingerprint, found)  # (1)
        for stage in ctx.stage_names():
            summary = ctx.stage_summary(stage)
            for label, record in _windows(summary):
                _power(label, record, machine, fingerprint, found)  # (2), (4)
            _samples(stage, ctx.trace(stage), machine, found)  # (3)
            _speed(summary, ctx.resolved().get("models") or {}, machine, found)  # (5), (6)
        if found.fail:
            raise VerificationError("; ".join(found.fail[:6]) + (f" (+{len(found.fail) - 6} more)"
                                                                 if len(found.fail) > 6 else ""))
        devices = ", ".join(f"gpu{i} {b.model} ({b.idle_floor_w:g}-{b.power_limit_w[1]:g} W, "
                            f"{b.peak_flops / 1e12:,.0f} TFLOP/s)" for i, b in machine.boards.items())
        cpu = machine.cpu
        cpu_text = (f"CPU {cpu.flops / 1e9:,.0f} GFLOP/s peak ({cpu.isa}, "
                    f"{cpu.mhz:g} MHz{' ceiling' if cpu.mhz_source == 'ceiling' else ''})")
        speed = f"; {', '.join(found.notes)}" if found.notes else ""
        if found.warn:
            return Warn("; ".join(found.warn[:6]) + f" [{devices + '; ' if devices else ''}{cpu_text}{speed}]")
        return f"within the table's envelope: {devices + '; ' if devices else ''}{cpu_text}{speed}"
