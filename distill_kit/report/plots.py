"""Plots as PNG bytes (matplotlib, Agg, no pyplot: no global state, safe to call from server threads).

Every function returns the PNG of one figure; PNGs are written without a timestamp, so the same data gives the
same bytes. Text from runs and bundles is never interpreted: mathtext and TeX are off while a figure is drawn (a
``$\\frac{a}{b}$`` task name is drawn as typed), hidden characters are shown as escapes (``text.label``), every label
is bounded in length, and a plot draws at most ``MAX_BARS`` bars and ``MAX_LABELS`` point labels.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from typing import Any

from distill_kit.energy.trace import Trace
from distill_kit.report.analysis import Point
from distill_kit.report.text import label

DOMAIN_COLORS = {"gpu": "#2f6db3", "cpu": "#e0892b", "ram": "#4f9d5d"}
DOMAINS = ("gpu", "cpu", "ram")
_LOCK = threading.Lock()  # matplotlib's text and font caches are not thread-safe
PLAIN_TEXT = {"text.usetex": False, "text.parse_math": False}
MAX_BARS = 40
MAX_LABELS = 30


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _render(draw: Any, width: float, height: float) -> bytes:
    import matplotlib

    with _LOCK, matplotlib.rc_context(PLAIN_TEXT):  # text artists read these when made and when drawn
        fig = _figure(width, height)
        draw(fig)
        return _png(fig)


def stage_breakdown_png(stages: Sequence[dict[str, Any]], title: str) -> bytes:
    """Energy of each stage stacked by domain (left) and wall time per stage (right)."""
    stages = stages[:MAX_BARS]
    names = _unique([label(s["stage"], 24) for s in stages])
    title = label(title, 80)

    def draw(fig: Any) -> None:
        energy_ax, time_ax = fig.subplots(1, 2, width_ratios=[3, 2])
        bottom = [0.0] * len(stages)
        for domain in DOMAINS:
            values = [(s["energy"][domain].get("energy_j") or 0.0) for s in stages]
            if any(values):
                energy_ax.bar(names, values, bottom=bottom, color=DOMAIN_COLORS[domain], label=domain.upper())
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        energy_ax.set_ylabel("energy (J)")
        energy_ax.set_title("energy by domain per stage")
        if any(bottom):
            energy_ax.legend(loc="upper left")
        else:
            energy_ax.text(0.5, 0.5, "no energy measured", ha="center", transform=energy_ax.transAxes)
        time_ax.bar(names, [s.get("wall_time_s") or 0.0 for s in stages], color="#777777")
        time_ax.set_ylabel("wall time (s)")
        time_ax.set_title("time per stage")
        fig.suptitle(title)

    return _render(draw, 9.0, 3.6)


def _segments(trace: Trace, column: str, t0: float) -> list[tuple[list[float], list[float], int | None]]:
    """(times since t0, values, attempt) runs of a numeric column, broken where the attempt changes."""
    runs: list[tuple[list[float], list[float], int | None]] = []
    last_attempt: object = object()
    for row in trace.rows:
        value = row.get(column)
        if not isinstance(value, float):
            continue
        attempt = row.get("attempt")
        if attempt != last_attempt:
            runs.append(([], [], attempt if isinstance(attempt, int) else None))
            last_attempt = attempt
        runs[-1][0].append(float(row["t"]) - t0)  # type: ignore[arg-type]
        runs[-1][1].append(value)
    return runs


def rapl_power_columns(trace: Trace) -> list[str]:
    return [c for c in trace.columns if c.startswith("rapl_") and c.endswith("_uj")]


def _rapl_power(trace: Trace, column: str, t0: float) -> tuple[list[float], list[float]]:
    """Power (W) from successive RAPL counter readings of one attempt; a wrap or a gap in the samples breaks the
    line (NaN) instead of being drawn as a dip."""
    rows = [(float(r["t"]), float(r[column]), r.get("attempt")) for r in trace.rows  # type: ignore[arg-type]
            if isinstance(r.get(column), float)]
    steps = sorted(b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False) if b[0] > a[0])
    longest = 2.5 * steps[len(steps) // 2] if steps else 0.0
    times, watts = [], []
    for (ta, ea, aa), (tb, eb, ab) in zip(rows, rows[1:], strict=False):
        if aa == ab and 0 < tb - ta <= longest and eb >= ea:
            times.append((ta + tb) / 2 - t0)
            watts.append((eb - ea) / 1e6 / (tb - ta))
        elif times and not math.isnan(watts[-1]):
            times.append((ta + tb) / 2 - t0)
            watts.append(math.nan)
    return times, watts


def trace_kind(trace: Trace) -> str:
    """``power`` when the trace holds GPU power or RAPL counters, ``utilisation`` when only CPU utilisation."""
    has_gpu = any(c.endswith("_power_w") and trace.values(c) for c in trace.columns)
    has_rapl = any(len(trace.values(c)) > 1 for c in rapl_power_columns(trace))
    return "power" if has_gpu or has_rapl else "utilisation"


def trace_png(trace: Trace, title: str) -> bytes:
    """The stage's power over time (GPU instant power, RAPL power from counter deltas); on a machine that
    measured no power, CPU utilisation instead, saying so on the plot."""
    t0 = min(trace.times(), default=0.0)
    kind = trace_kind(trace)
    title = label(title, 80)

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        if kind == "power":
            for column in [c for c in trace.columns if c.endswith("_power_w")]:
                for ts, vs, attempt in _segments(trace, column, t0):
                    name = label(column.removesuffix("_power_w"), 24)
                    ax.plot(ts, vs, linewidth=1, label=f"{name} (attempt {attempt})")
            for column in rapl_power_columns(trace):
                ts, vs = _rapl_power(trace, column, t0)
                if ts:
                    ax.plot(ts, vs, linewidth=1, label=label(column.removesuffix("_uj").replace("rapl_", "RAPL "), 24))
            ax.set_ylabel("power (W)")
        else:
            for ts, vs, attempt in _segments(trace, "cpu_util_pct", t0):
                ax.plot(ts, vs, linewidth=1, color="#e0892b", label=f"CPU utilisation (attempt {attempt})")
            ax.set_ylabel("CPU utilisation (%)")
            ax.set_ylim(0, 105)
            ax.text(0.01, 0.04, "power was not measured on this machine: CPU utilisation shown",
                    transform=ax.transAxes, va="bottom", fontsize=9, color="#a33",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        ax.set_xlabel("time since the stage's first sample (s)")
        ax.set_title(title)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc="lower right", fontsize=8)

    return _render(draw, 8.0, 2.8)


def eval_energy_png(tasks: Sequence[dict[str, Any]], title: str) -> bytes:
    """Energy of each (model, task) evaluation window."""
    tasks = tasks[:MAX_BARS]
    labels = _unique([f"{label(t.get('model'), 24)}\n{label(t.get('task'), 24)}" for t in tasks])
    title = label(title, 80)
    values = [t.get("energy_j") or 0.0 for t in tasks]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ax.bar(labels, values, color="#6a5acd")
        for i, task in enumerate(tasks):
            if task.get("energy_j") is None:
                ax.text(i, 0, "unmeasured", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("energy (J)")
        ax.set_title(title)

    return _render(draw, max(5.0, 1.2 * len(tasks) + 2), 3.0)


def pareto_png(points: Sequence[Point], frontier: Sequence[Point], labels: dict[str, str], task: str) -> bytes:
    """Quality on ``task`` vs total energy, every run a dot, the frontier highlighted and joined."""
    on_frontier = {p.key for p in frontier}
    named = [*frontier, *(p for p in points if p.key not in on_frontier)][:MAX_LABELS]
    task = label(task, 60)

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        others = [p for p in points if p.key not in on_frontier]
        if others:
            ax.scatter([p.energy_j for p in others], [p.quality for p in others], color="#999999", s=30,
                       label="dominated", zorder=2)
        if frontier:
            ax.plot([p.energy_j for p in frontier], [p.quality for p in frontier], "-o", color="#d62728",
                    markersize=7, label="Pareto frontier", zorder=3)
        for p in named:
            ax.annotate(label(labels.get(p.key, p.key), 28), (p.energy_j, p.quality), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        energies = [p.energy_j for p in points if p.energy_j > 0]
        if energies and max(energies) / min(energies) > 50:
            ax.set_xscale("log")
        if not points:
            ax.text(0.5, 0.5, "no entries with this task yet", ha="center", transform=ax.transAxes)
        ax.set_xlabel("total energy (J, teacher included)")
        ax.set_ylabel(f"student quality: {task}")
        ax.set_title(f"quality vs energy: {task}")
        ax.grid(True, alpha=0.3)
        if points:
            ax.legend(loc="lower right", fontsize=8)

    return _render(draw, 7.0, 4.2)


def _unique(names: list[str]) -> list[str]:
    """Category labels made distinct (two stages or tasks clipped to the same text must stay two bars)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
