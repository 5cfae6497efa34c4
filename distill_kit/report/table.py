"""The results table of a run: per stage time, tokens and energy with its method; quality per model."""

from __future__ import annotations

from typing import Any

from rich.table import Table

DOMAIN_ORDER = ("gpu", "cpu", "ram")


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1e4:
        return f"{value:,.0f}{unit}"
    return f"{value:.{digits}f}{unit}"


SHORT_METHOD = {"counter": "ctr", "integrated": "int", "estimate": "est", "unmeasured": "n/a"}
CAPTION = "energy in J ± uncertainty; ctr = hardware counter, int = integrated power, est = estimate, " \
          "n/a = unmeasured (see the summary for why)"


def _energy_cell(figure: dict[str, Any]) -> str:
    if figure["energy_j"] is None:
        return "n/a"
    unc = figure.get("uncertainty_j")
    partial = ", partial" if figure.get("partial") else ""
    return f"{_fmt(figure['energy_j'])} ± {_fmt(unc)} {SHORT_METHOD[figure['method']]}{partial}"


def stages_table(stages: list[dict[str, Any]], title: str = "stages",
                 between: dict[str, Any] | None = None) -> Table:
    """One row per stage, then the energy between stages (the run summary's ``totals.between_stages``)."""
    table = Table(title=title, title_justify="left", caption=CAPTION, caption_justify="left")
    for column in ("stage", "status", "time s", "tokens", "GPU J", "CPU J", "RAM J", "J/token"):
        table.add_column(column, justify="right" if column not in ("stage", "status") else "left")
    for stage in stages:
        energy = stage["energy"]
        tokens = f"{stage['tokens']:,} {stage['token_kind'].replace('_tokens', '')}" if stage["tokens"] else "—"
        attempts = f" ({len(stage['attempts'])} attempts)" if len(stage["attempts"]) > 1 else ""
        table.add_row(stage["stage"], stage["status"] + attempts, _fmt(stage["wall_time_s"]), tokens,
                      *(_energy_cell(energy[d]) for d in DOMAIN_ORDER), _fmt(stage.get("j_per_token"), digits=4))
    if between is not None:
        table.add_row("between stages", "", _fmt(between["duration_s"]), "—",
                      *(_energy_cell(between["energy"][d]) for d in DOMAIN_ORDER), "—")
    return table


def quality_table(quality: dict[str, dict[str, float]]) -> Table:
    table = Table(title="quality", title_justify="left")
    tasks = sorted({t for scores in quality.values() for t in scores})
    table.add_column("model")
    for task in tasks:
        table.add_column(task, justify="right")
    for model in ("teacher", "student_initial", "student"):
        if model in quality:
            table.add_row(model, *(_fmt(quality[model].get(t), digits=3) for t in tasks))
    return table


def totals_line(summary: dict[str, Any]) -> str:
    totals = summary["totals"]
    per_token = summary.get("j_per_trained_token")
    why = f" ({totals['energy_above_idle_reason']})" if totals.get("energy_above_idle_reason") else ""
    return (f"total energy {_fmt(totals['energy_j'])} J (methods: {', '.join(totals['methods'])}), "
            f"above idle {_fmt(totals['energy_above_idle_j'])} J{why}, wall {_fmt(totals['wall_time_s'])} s"
            + (f", {per_token:.4f} J per trained token" if per_token else ""))
