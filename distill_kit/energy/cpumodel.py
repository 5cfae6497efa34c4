"""The kit's CPU and RAM power model, for machines without RAPL: parameters from a table by CPU model
(``cpus.json``) or the manifest, usage from the kit's own process tree and from the whole machine.

CPU: ``P(u) = N x W x (i + (f - i) x u)``: N logical CPUs, W the TDP per hardware thread of the package they
belong to, i the idle share of TDP, f the sustained full-load share, u the utilisation. Over a window of D
seconds in which the CPUs were busy for C CPU-seconds, ``E = N x W x i x D + W x (f - i) x C``. RAM:
``E = (r x GiB installed + w x GiB in use, averaged over the window) x D``, r the refresh power of idle DRAM.
Each parameter is a range; E grows with every one of them (C <= N x D), so the interval is the model at the low
ends and at the high ends, and the figure is its middle, with half its width as the uncertainty. Two
attributions, both reported: ``process`` (C = CPU time of the kit's process tree, memory = its resident set)
and ``machine`` (C = every process's CPU time, memory = the machine's memory in use); the static parts (CPU
idle, DRAM refresh) belong to the machine the run holds and count in both. The headline figure is ``process``.
docs/energy.md, "CPU and RAM without RAPL".
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from distill_kit.energy.figures import CrossCheck, EnergyFigure

MODEL_VERSION = 1
TABLE_PATH = Path(__file__).with_name("cpus.json")
ATTRIBUTIONS = ("process", "machine")
USAGE_KEYS = {"cpu": ("cpu_tree_s", "cpu_busy_s"), "ram": ("ram_tree_mib", "ram_used_mib")}


@cache
def cpu_table() -> dict[str, Any]:
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class CpuIdentity:
    model_name: str
    vendor: str
    family: int | None
    model: int | None
    logical_cpus: int


def cpu_identity(cpuinfo: str | None = None, logical_cpus: int | None = None) -> CpuIdentity:
    """The first processor's model name, vendor, family and model from /proc/cpuinfo (empty where absent)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())

    def number(key: str) -> int | None:
        return int(fields[key]) if fields.get(key, "").isdigit() else None

    return CpuIdentity(fields.get("model name", ""), fields.get("vendor_id", ""), number("cpu family"),
                       number("model"), logical_cpus or os.cpu_count() or 1)


def _w_per_thread(rows: list[dict[str, Any]]) -> tuple[float, float]:
    values = [row["tdp_w"] / row["threads"] for row in rows]
    return min(values), max(values)


def _match(identity: CpuIdentity) -> tuple[str, tuple[float, float], list[str]]:
    """(how the CPU was matched, W per thread range, the rows used) from the table: by model name, else by
    vendor + family + model, else by vendor, else the range of every row."""
    table = cpu_table()
    rows = table["models"]
    named = [r for r in rows if r["name"].lower() in identity.model_name.lower()]
    if named:
        row = max(named, key=lambda r: len(r["name"]))
        return f"table: {row['name']}", _w_per_thread([row]), [row["name"]]
    family = [r for r in rows if r["vendor"] == identity.vendor and identity.family is not None
              and (r["family"], r["model"]) == (identity.family, identity.model)]
    if family:
        return (f"table: {identity.vendor} family {identity.family} model {identity.model} "
                f"({len(family)} models)", _w_per_thread(family), [r["name"] for r in family])
    vendor = [r for r in rows if r["vendor"] == identity.vendor]
    if vendor:
        return f"table: any {identity.vendor} model ({len(vendor)} models)", _w_per_thread(vendor), \
            [r["name"] for r in vendor]
    unknown = table["unknown_cpu_w_per_thread"]
    return "unknown CPU: the span of the table", (unknown["low"], unknown["high"]), []


@dataclass(frozen=True)
class PowerModel:
    """The parameters one run's CPU and RAM figures were computed with; recorded in every window's edges."""

    cpu_model_name: str
    cpu_match: str
    threads: int
    w_per_thread: tuple[float, float]
    idle_fraction: tuple[float, float]
    full_load_fraction: tuple[float, float]
    ram_w_per_gib: tuple[float, float]
    ram_source: str
    ram_installed_gib: float
    ram_refresh_w_per_gib: tuple[float, float]
    version: int = MODEL_VERSION
    cpu_vendor: str = ""
    cpu_family: int | None = None
    cpu_model_number: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PowerModel:
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    @property
    def nominal_cpu_power_w(self) -> float:
        """Full-load power of the run's CPUs at the middle of every range (CodeCarbon's ``force_cpu_power``)."""
        return self.threads * _mid(self.w_per_thread) * _mid(self.full_load_fraction)

    def cpu_j(self, duration_s: float, cpu_s: float, corner: int) -> float:
        w, i, f = self.w_per_thread[corner], self.idle_fraction[corner], self.full_load_fraction[corner]
        busy = min(max(cpu_s, 0.0), self.threads * duration_s)
        return self.threads * w * i * duration_s + w * (f - i) * busy

    def ram_j(self, duration_s: float, gib: float, corner: int) -> float:
        refresh = self.ram_refresh_w_per_gib[corner] * self.ram_installed_gib
        return (refresh + self.ram_w_per_gib[corner] * gib) * duration_s

    def source(self, domain: str) -> str:
        if domain == "cpu":
            return (f"kit CPU model v{self.version}: N x W x (i + (f - i) x u), N={self.threads} threads, "
                    f"W={_span(self.w_per_thread)} W/thread ({self.cpu_match}), i={_span(self.idle_fraction)}, "
                    f"f={_span(self.full_load_fraction)}")
        return (f"kit RAM model v{self.version}: r x GiB installed + w x GiB in use, "
                f"r={_span(self.ram_refresh_w_per_gib)} W/GiB x {self.ram_installed_gib:.4g} GiB, "
                f"w={_span(self.ram_w_per_gib)} W/GiB ({self.ram_source})")


def _mid(pair: tuple[float, float]) -> float:
    return (pair[0] + pair[1]) / 2


def _span(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.4g}" if pair[0] == pair[1] else f"{pair[0]:.4g}-{pair[1]:.4g}"


def _range(entry: dict[str, Any]) -> tuple[float, float]:
    return float(entry["low"]), float(entry["high"])


def power_model(energy: dict[str, Any] | None = None, identity: CpuIdentity | None = None,
                memory_gib: float | None = None) -> PowerModel:
    """The model's parameters for this machine: the table's, replaced by the manifest's ``energy.cpu_tdp_w``
    (with ``energy.cpu_threads``, the hardware threads that TDP covers; default the machine's logical CPUs) and
    ``energy.ram_w_per_gib`` where given (a given value is exact: its range is that value)."""
    energy = energy or {}
    identity = identity or cpu_identity()
    table = cpu_table()
    match, w_range, _ = _match(identity)
    if energy.get("cpu_tdp_w") is not None:
        threads = int(energy.get("cpu_threads") or identity.logical_cpus)
        per_thread = float(energy["cpu_tdp_w"]) / threads
        w_range, match = (per_thread, per_thread), f"manifest energy.cpu_tdp_w={energy['cpu_tdp_w']:g} W " \
                                                   f"over {threads} threads"
    ram, ram_source = _range(table["ram_w_per_gib"]), "table range, DDR4/DDR5"
    if energy.get("ram_w_per_gib") is not None:
        ram, ram_source = (float(energy["ram_w_per_gib"]),) * 2, "manifest energy.ram_w_per_gib"
    return PowerModel(identity.model_name or "unknown", match, identity.logical_cpus, w_range,
                      _range(table["idle_fraction"]), _range(table["full_load_fraction"]), ram, ram_source,
                      installed_gib() if memory_gib is None else memory_gib, _range(table["ram_refresh_w_per_gib"]),
                      cpu_vendor=identity.vendor, cpu_family=identity.family, cpu_model_number=identity.model)


def recorded_model_problems(recorded: dict[str, Any], energy: dict[str, Any] | None,
                            fingerprint: dict[str, Any]) -> list[str]:
    """How a window's recorded power model differs from the one this table and the manifest's overrides give for
    the fingerprinted CPU (model name, logical CPUs, memory; vendor, family and model as recorded, which the
    fingerprint does not hold): a figure computed with parameters of the forger's choosing is caught here."""
    try:
        model = PowerModel.from_dict(recorded)
    except TypeError as err:
        return [f"unreadable power model ({err})"]
    cpu = fingerprint.get("cpu") or {}
    identity = CpuIdentity(str(cpu.get("model") or ""), model.cpu_vendor, model.cpu_family, model.cpu_model_number,
                           int(cpu.get("logical_cores") or 1))
    expected = power_model(energy, identity, memory_gib=model.ram_installed_gib).to_dict()
    problems = [f"{key} (got {value!r}, expected {expected[key]!r})" for key, value in model.to_dict().items()
                if value != expected[key]]
    memory = fingerprint.get("memory_gib")
    if memory and abs(model.ram_installed_gib - float(memory)) > 0.01 * float(memory) + 0.01:
        problems.append(f"ram_installed_gib (got {model.ram_installed_gib:g}, expected the fingerprint's "
                        f"{float(memory):g})")
    return problems


def installed_gib() -> float:
    """The machine's memory (psutil; 0 where it cannot be read: the refresh term then drops out)."""
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except Exception:  # noqa: BLE001
        return 0.0


# -- usage readings (at every window edge) ---------------------------------------------------------------------
def _tree(process: Any) -> list[Any]:
    import psutil

    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return [process]


def tree_cpu_s(process: Any) -> float:
    """CPU seconds of a process, every live descendant, and every child any of them has reaped (each member's
    ``children_*``: a grandchild reaped by a child moves its time there, not to the root's)."""
    import psutil

    total = 0.0
    for member in _tree(process):
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue  # ended between the listing and the read: its time is in its parent's children_*
        total += times.user + times.system + times.children_user + times.children_system
    return total


def window_cpu_s(readings: list[float]) -> float:
    """The process tree's CPU seconds over a window from its successive ``tree_cpu_s`` readings (the edges and the
    sampler's rows between them): the sum of the rises. A reading falls only when a descendant leaves the tree
    unreaped by it (orphaned: its parent ended first, init reaps it), taking all its CPU time, most of it spent
    before the window, with it. A plain end-minus-start would subtract that; the sum of rises keeps what every
    interval measured, short only of the orphan's work since the last reading (docs/energy.md)."""
    return sum(max(0.0, b - a) for a, b in itertools.pairwise(readings))


def tree_rss_mib(process: Any) -> float:
    import psutil

    total = 0
    for member in _tree(process):
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def read_usage(pid: int | None = None) -> dict[str, float]:
    """CPU seconds and memory in use of the kit's process tree and of the whole machine, now (empty without
    psutil). The machine's busy time excludes idle and iowait."""
    try:
        import psutil

        process = psutil.Process(pid)
        machine = psutil.cpu_times()
        memory = psutil.virtual_memory()
        return {"cpu_tree_s": tree_cpu_s(process),
                "cpu_busy_s": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
                "ram_tree_mib": tree_rss_mib(process), "ram_used_mib": (memory.total - memory.available) / 2**20}
    except Exception:  # noqa: BLE001 - without a reading the window's CPU/RAM figure says it is unmeasured
        return {}


# -- figures ---------------------------------------------------------------------------------------------------
def _usage(domain: str, attribution: str, start: dict[str, Any], end: dict[str, Any],
           samples: list[float]) -> float | None:
    """CPU-seconds over the window (cpu) or mean GiB in use (ram), for one attribution."""
    key = USAGE_KEYS[domain][ATTRIBUTIONS.index(attribution)]
    if start.get(key) is None or end.get(key) is None:
        return None
    points = [float(start[key]), *samples, float(end[key])]
    if domain == "cpu":
        return window_cpu_s(points)
    return sum(points) / len(points) / 1024.0


def model_figure(domain: str, model: PowerModel, duration_s: float, start: dict[str, Any], end: dict[str, Any],
                 samples: dict[str, list[float]] | None = None,
                 codecarbon: dict[str, Any] | None = None) -> EnergyFigure | None:
    """The model's figure of one window for ``cpu`` or ``ram`` (process attribution as the headline, machine
    beside it), or None when the edges hold no usage readings. ``samples``: the trace's in-window values per
    usage column (the tree's CPU seconds and memory; the machine's memory). CodeCarbon's figure for the window,
    when given, is its cross-check."""
    attribution: dict[str, dict[str, float]] = {}
    for who in ATTRIBUTIONS:
        key = USAGE_KEYS[domain][ATTRIBUTIONS.index(who)]
        usage = _usage(domain, who, start, end, (samples or {}).get(key, []))
        if usage is None:
            return None
        energy = model.cpu_j if domain == "cpu" else model.ram_j
        low, high = energy(duration_s, usage, 0), energy(duration_s, usage, 1)
        attribution[who] = {"energy_j": (low + high) / 2, "uncertainty_j": (high - low) / 2,
                            "cpu_s" if domain == "cpu" else "mean_gib": usage}
    head = attribution["process"]
    check = None
    if codecarbon and codecarbon.get(f"{domain}_energy_j") is not None:
        reference = float(codecarbon[f"{domain}_energy_j"])
        gap = (reference - head["energy_j"]) / head["energy_j"] if head["energy_j"] > 0 else None
        check = CrossCheck(f"codecarbon {codecarbon.get('version', '')} {codecarbon.get('mode', '')}".strip(),
                           reference, gap)
    return EnergyFigure(energy_j=head["energy_j"], method="estimate", source=model.source(domain),
                        uncertainty_j=head["uncertainty_j"],
                        avg_power_w=head["energy_j"] / duration_s if duration_s > 0 else None,
                        reason="no RAPL counter: modelled, process-tree attribution", cross_check=check,
                        attribution=attribution)
