"""From edge readings and a trace to the energy figures of one window, per domain.

Pure functions: the meter calls them when a window closes, ``verify`` calls them again on the bundled trace and
edges, so a figure in a summary is exactly what its raw data gives.
"""

from __future__ import annotations

from typing import Any, cast

from distill_kit.energy.figures import SENSOR_REL_ACCURACY, CrossCheck, EnergyFigure
from distill_kit.energy.trace import Trace, integrate_power_j

COUNTER_PERIOD_S = 0.1  # the NVML energy counter advanced about every 100 ms on an H100 (FIELD_NOTES)
ESTIMATE_SOURCE = "codecarbon"


def _gpu_power_series(trace: Trace) -> list[tuple[float, float]]:
    """Total instant power of the visible GPUs per sample (rows where every GPU read)."""
    indices = trace.gpu_indices()
    series: list[tuple[float, float]] = []
    for row in trace.rows:
        values = [row.get(f"gpu{i}_power_w") for i in indices]
        if indices and all(isinstance(v, float) for v in values):
            series.append((float(row["t"]), sum(values)))  # type: ignore[arg-type]
    return series


def _counter_at(edge: dict[str, Any], t: float) -> list[float | None]:
    """Each GPU's energy counter (mJ) at the edge time ``t``: the reading, aligned between the counter's steps
    around the edge when the meter recorded them (``counter_edges``; older edges hold the reading only)."""
    from distill_kit.energy.counter_edges import aligned_mj

    readings = edge.get("gpu_energy_mj") or []
    after = edge.get("gpu_counter_after") or [None] * len(readings)
    if len(after) != len(readings):
        return list(readings)
    return [aligned_mj(t, r, a, COUNTER_PERIOD_S) for r, a in zip(readings, after, strict=True)]


def gpu_figure(trace: Trace, t_start: float, t_end: float, edges: dict[str, Any] | None,
               interval_s: float, unavailable_reason: str | None) -> EnergyFigure:
    duration = t_end - t_start
    power = _gpu_power_series(trace)
    integrated = integrate_power_j(power, t_start, t_end) if power else None
    peak = max((p for _, p in power), default=None)
    start = _counter_at((edges or {}).get("start") or {}, t_start)
    end = _counter_at((edges or {}).get("end") or {}, t_end)
    notes = []
    if duration < 3 * COUNTER_PERIOD_S:
        notes.append(f"window of {duration:.3f} s is shorter than 3 counter update periods ({COUNTER_PERIOD_S} s)")
    pairs = [(s, e) for s, e in zip(start, end, strict=False) if s is not None and e is not None]
    if start and len(start) == len(end) and len(pairs) == len(start):
        energy = sum(e - s for s, e in pairs) / 1000.0
        if energy > 0 or integrated is None:
            avg = energy / duration if duration > 0 else None
            gap = (integrated - energy) / energy if integrated is not None and energy > 0 else None
            quantisation = 2 * COUNTER_PERIOD_S * (avg or 0.0)
            return EnergyFigure(
                energy_j=energy, method="counter", source="nvml:nvmlDeviceGetTotalEnergyConsumption",
                uncertainty_j=SENSOR_REL_ACCURACY["counter"] * energy + quantisation, avg_power_w=avg,
                peak_power_w=peak, notes=notes,
                cross_check=CrossCheck("integrated_instant_power", integrated, gap) if integrated is not None else None,
            )
        notes.append("energy counter did not advance in this window; integrated power used instead")
    if integrated is not None:
        return EnergyFigure(
            energy_j=integrated, method="integrated", source="nvml:field POWER_INSTANT, trapezoid",
            uncertainty_j=SENSOR_REL_ACCURACY["integrated"] * integrated + interval_s * (peak or 0.0),
            avg_power_w=integrated / duration if duration > 0 else None, peak_power_w=peak, notes=notes,
        )
    return EnergyFigure.unmeasured(unavailable_reason or "no GPU power readings in this window", source="nvml")


def rapl_figure(domain: str, edges: dict[str, Any] | None, duration_s: float) -> EnergyFigure | None:
    """Package (cpu) or DRAM (ram) energy from RAPL edge readings, wraparound handled; None if absent."""
    from distill_kit.energy.sensors import rapl_delta_uj

    start = (edges or {}).get("start", {}).get("rapl_uj") or {}
    end = (edges or {}).get("end", {}).get("rapl_uj") or {}
    ranges = (edges or {}).get("rapl_max_uj") or {}
    zones = [z for z in start if (edges or {}).get("rapl_domain", {}).get(z) == domain and z in end]
    if not zones:
        return None
    energy = sum(rapl_delta_uj(start[z], end[z], ranges.get(z, 2**32)) for z in zones) / 1e6
    return EnergyFigure(
        energy_j=energy, method="counter", source="rapl:powercap " + ",".join(sorted(zones)),
        uncertainty_j=SENSOR_REL_ACCURACY["counter"] * energy,
        avg_power_w=energy / duration_s if duration_s > 0 else None,
    )


def estimate_figure(domain: str, codecarbon: dict[str, Any] | None, reason: str) -> EnergyFigure:
    if not codecarbon:
        return EnergyFigure.unmeasured(f"{reason}; no CodeCarbon estimate for this window", source="none")
    energy = float(codecarbon[f"{domain}_energy_j"])
    return EnergyFigure(
        energy_j=energy, method="estimate", source=f"{ESTIMATE_SOURCE} {codecarbon.get('version', '')}".strip(),
        uncertainty_j=SENSOR_REL_ACCURACY["estimate"] * energy,
        avg_power_w=codecarbon.get(f"{domain}_power_w"), reason=reason,
    )


def window_figures(trace: Trace, t_start: float, t_end: float, edges: dict[str, Any] | None,
                   codecarbon: dict[str, Any] | None, interval_s: float,
                   reasons: dict[str, str]) -> dict[str, EnergyFigure]:
    """Energy of one window for each domain (gpu, cpu, ram), with method, uncertainty and reason."""
    figures = {"gpu": gpu_figure(trace, t_start, t_end, edges, interval_s, reasons.get("gpu"))}
    for domain in ("cpu", "ram"):
        figure = rapl_figure(domain, edges, t_end - t_start) or modelled_figure(domain, trace, t_start, t_end,
                                                                                edges, codecarbon)
        figures[domain] = figure or estimate_figure(domain, codecarbon, reasons.get(domain, "no RAPL counter"))
    return figures


def modelled_figure(domain: str, trace: Trace, t_start: float, t_end: float, edges: dict[str, Any] | None,
                    codecarbon: dict[str, Any] | None) -> EnergyFigure | None:
    """The kit's CPU/RAM power model over the window (``cpumodel``), from the parameters and usage readings the
    edges recorded and the trace's memory samples; None for edges of older kits (no ``power_model``)."""
    from distill_kit.energy.cpumodel import USAGE_KEYS, PowerModel, model_figure

    if not edges or not edges.get("power_model"):
        return None
    inside = trace.window(t_start, t_end)
    samples = {key: [v for _, v in inside.values(key)] for keys in USAGE_KEYS.values() for key in keys
               if key in trace.columns}
    return model_figure(domain, PowerModel.from_dict(edges["power_model"]), t_end - t_start,
                        edges.get("start") or {}, edges.get("end") or {}, samples, codecarbon)


# What an idle baseline may contain and still be one (docs/energy.md, "The idle baseline"). Each limit keeps the
# bias the condition can put into the baseline within the 5% accuracy the kit assumes for its counter figures:
# - other processes' CPU use: on a power model linear in utilisation, a foreign load u raises the CPU's power by
#   u x (its dynamic range), so u <= 5% of the machine keeps the bias within 5% of that range;
# - GPU utilisation (the share of time a kernel ran, NVML): the kit launches nothing while it measures idle, so
#   anything above 5% on average is someone else's work;
# - GPU power's relative standard deviation: a quiet board holds its idle power within about +-3% (73-77 W on an
#   H100, FIELD_NOTES); one that moves by more than 5% is still changing state (clocks, fans, a job ending).
IDLE_MAX_FOREIGN_CPU_PCT = 5.0
IDLE_MAX_GPU_UTIL_PCT = 5.0
IDLE_MAX_GPU_POWER_REL_SD = 0.05


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def window_load(trace: Trace, t_start: float, t_end: float) -> dict[str, Any] | None:
    """How busy the machine was during a window, from the samples inside it: the mean CPU use of processes
    outside the kit's tree (% of the machine), the mean utilisation of the busiest GPU, and the relative standard
    deviation of the GPUs' total power. None for a trace that does not record foreign CPU use (older samplers)."""
    if "cpu_foreign_pct" not in trace.columns:
        return None
    inside = trace.window(t_start, t_end)
    foreign = _mean([v for _, v in inside.values("cpu_foreign_pct")])
    utils = [_mean([v for _, v in inside.values(f"gpu{i}_util_pct")]) for i in trace.gpu_indices()]
    power = [p for t, p in _gpu_power_series(inside)]
    mean_power = _mean(power)
    rel_sd = None
    if mean_power and len(power) >= 2:
        rel_sd = (sum((p - mean_power) ** 2 for p in power) / (len(power) - 1)) ** 0.5 / mean_power
    return {"samples": len(inside.rows), "foreign_cpu_pct": foreign,
            "gpu_util_pct": max((u for u in utils if u is not None), default=None), "gpu_power_rel_sd": rel_sd}


def idle_baseline(load: dict[str, Any] | None) -> dict[str, Any] | None:
    """Whether an idle window measured an idle machine: ``valid`` and, when not, the ``reason`` (every condition
    broken, with the value and the limit). A condition that could not be observed is listed in ``unchecked``.
    None when the window's load was not recorded (older traces)."""
    if load is None:
        return None
    problems, unchecked = [], []
    limits = (("foreign_cpu_pct", IDLE_MAX_FOREIGN_CPU_PCT, "other processes used {:.1f}% of the CPUs (limit {:g}%)"),
              ("gpu_util_pct", IDLE_MAX_GPU_UTIL_PCT, "GPU utilisation averaged {:.1f}% (limit {:g}%)"),
              ("gpu_power_rel_sd", IDLE_MAX_GPU_POWER_REL_SD,
               "GPU power varied by {:.3f} relative standard deviation (limit {:g})"))
    for key, limit, message in limits:
        value = load.get(key)
        if value is None:
            unchecked.append(key)
        elif value > limit:
            problems.append(message.format(value, limit))
    return {"valid": not problems, "reason": "; ".join(problems) or None, "unchecked": unchecked,
            "limits": {key: limit for key, limit, _ in limits}}


def idle_power_uncertainty_w(idle: dict[str, Any]) -> dict[str, float | None]:
    """The idle window's uncertainty per domain as power (uncertainty_j / duration), beside ``idle_power_w``."""
    return {d: (f["uncertainty_j"] / idle["duration_s"]
                if f.get("uncertainty_j") is not None and idle["duration_s"] > 0 else None)
            for d, f in idle["energy"].items()}


def _edge_at(record: dict[str, Any], side: str) -> dict[str, Any]:
    edges = record.get("edges") or {}
    return {**(edges.get(side) or {}), "t": record["t_start" if side == "start" else "t_end"]}


def _gaps(run_window: dict[str, Any], inside: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The stretches of the run window outside every stage window, as (opening edge, closing edge)."""
    opens = [_edge_at(run_window, "start"), *(_edge_at(a, "end") for a in inside)]
    closes = [*(_edge_at(a, "start") for a in inside), _edge_at(run_window, "end")]
    return list(zip(opens, closes, strict=True))


def _estimate_between(domain: str, run_window: dict[str, Any], inside: list[dict[str, Any]]) -> EnergyFigure:
    """CodeCarbon's run-window estimate minus its stage-window estimates (it has no edges to difference)."""
    run_cc = run_window.get("codecarbon")
    if not run_cc or any(not a.get("codecarbon") for a in inside):
        return EnergyFigure.unmeasured(f"no {domain} counter at the stage edges, and no CodeCarbon estimate for the "
                                       "run window and every stage window")
    energy = float(run_cc[f"{domain}_energy_j"]) - sum(float(a["codecarbon"][f"{domain}_energy_j"]) for a in inside)
    return EnergyFigure(
        energy_j=energy, method="estimate", uncertainty_j=SENSOR_REL_ACCURACY["estimate"] * abs(energy),
        source=f"{ESTIMATE_SOURCE} {run_cc.get('version', '')}: run window minus {len(inside)} stage windows",
        notes=["negative: the estimates of overlapping windows disagree by more than what lies between"]
        if energy < 0 else [])


def between_stages(run_window: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """Energy of the run window outside every stage window (start-up, imports, loading between stages), per domain.

    Counters (NVML energy, RAPL) are read at every gap's own edges: the run window's and the stage windows' edge
    readings, so the sum over the gaps is the run window minus the stage windows without one long RAPL interval
    that could wrap more than once. CPU and RAM without RAPL: CodeCarbon's run-window figure minus its stage-window
    figures. Attempts outside the run window (a resumed run's earlier invocations) make every figure partial: the
    time between their stages was not measured.
    """
    from distill_kit.energy.figures import sum_figures

    t0, t1 = run_window["t_start"], run_window["t_end"]
    inside = sorted((a for a in attempts if t0 <= a["t_start"] and a["t_end"] <= t1), key=lambda a: a["t_start"])
    meta = {k: v for k, v in (run_window.get("edges") or {}).items()
            if k in ("rapl_max_uj", "rapl_domain", "power_model")}
    empty = Trace(["t"], [])
    gaps = [window_figures(empty, start["t"], end["t"], {"start": start, "end": end, **meta}, None, 0.0,
                           {"gpu": "no GPU energy counter readings at the stage edges"})
            for start, end in _gaps(run_window, inside)]
    energy = {}
    for domain in ("gpu", "cpu", "ram"):
        parts = [g[domain] for g in gaps]
        if domain != "gpu" and any(p.method == "unmeasured" for p in parts):
            energy[domain] = _estimate_between(domain, run_window, inside)
        else:
            energy[domain] = sum_figures(parts)
        if len(inside) < len(attempts) and energy[domain].energy_j is not None:
            energy[domain].partial = True
            energy[domain].notes.append("resumed run: only this invocation's time between stages was measured")
    return {"duration_s": (t1 - t0) - sum(a["duration_s"] for a in inside), "stage_windows": len(inside),
            "energy": {d: f.to_dict() for d, f in energy.items()}}


def gpu_shares(trace: Trace, t_start: float, t_end: float, edges: dict[str, Any] | None, method: str
               ) -> list[dict[str, Any]]:
    """Each visible GPU's part of a window's GPU figure, by the figure's own method: its counter difference, or
    its instant power integrated over the rows where every GPU read (the rows the total integrates). GPU ``i``
    is the i-th visible GPU: trace columns ``gpu{i}_*``, edge list position ``i``, fingerprint ``gpus[i]``.
    The shares sum to the window's figure; a spread stage's ranks each show here."""
    indices = trace.gpu_indices()
    start = _counter_at((edges or {}).get("start") or {}, t_start)  # aligned as the total's (gpu_figure)
    end = _counter_at((edges or {}).get("end") or {}, t_end)
    rows = [r for r in trace.rows if indices and all(isinstance(r.get(f"gpu{i}_power_w"), float) for i in indices)]
    shares = []
    for i in range(max(len(indices), len(start))):
        energy = None
        if method == "counter" and i < len(start) and i < len(end) and start[i] is not None and end[i] is not None:
            energy = (cast(float, end[i]) - cast(float, start[i])) / 1000.0
        elif method == "integrated" and i in indices:
            energy = integrate_power_j([(float(cast(float, r["t"])), float(cast(float, r[f"gpu{i}_power_w"])))
                                        for r in rows], t_start, t_end)
        shares.append({"gpu": i, "energy_j": energy, "method": method if energy is not None else "unmeasured"})
    return shares
