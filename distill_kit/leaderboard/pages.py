"""The leaderboard's server-rendered pages: ranking, Pareto plots, one entry. No script, no external resource."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from distill_kit.leaderboard.models import EntryDetail, EntryOut, ParetoOut
from distill_kit.leaderboard.store import STUDENT, EntryFilter
from distill_kit.report.html import energy_cell, esc, fmt, page, table, tier_marks, verify_table

NAV = '<nav><a href="/">ranking</a><a href="/pareto">Pareto frontier</a><a href="/openapi.json">API (OpenAPI)</a></nav>'
DOMAINS = ("gpu", "cpu", "ram")


def _options(values: Sequence[str], chosen: str | None, blank: str) -> str:
    items = [f'<option value="">{esc(blank)}</option>']
    items += [f'<option value="{esc(v)}"{" selected" if v == chosen else ""}>{esc(v)}</option>' for v in values]
    return "".join(items)


def _filter_form(f: EntryFilter, tasks: Sequence[str], pipelines: Sequence[str]) -> str:
    def number(name: str, value: float | None) -> str:
        shown = "" if value is None else f"{value:g}"
        return f'<input type="number" step="any" min="0" name="{name}" value="{shown}" size="6">'

    return (f'<form method="get" action="/">task <select name="task">{_options(tasks, f.task, "any")}</select>'
            f'pipeline <select name="pipeline">{_options(pipelines, f.pipeline, "any")}</select>'
            f"student params (B) from {number('min_params_b', f.min_params_b)} to "
            f"{number('max_params_b', f.max_params_b)}"
            f'<button type="submit">filter</button></form>')


def ranking_page(entries: Sequence[EntryOut], f: EntryFilter, tasks: Sequence[str], pipelines: Sequence[str],
                 frontier: set[str]) -> str:
    shown_tasks = [f.task] if f.task else list(tasks)
    rows, classes = [], []
    for rank, e in enumerate(entries, start=1):
        quality = [fmt(e.scores.get(STUDENT, {}).get(t), 3) for t in shown_tasks]
        mark = "★" if e.bundle_sha256 in frontier else ""
        rows.append([str(rank), f'<a href="{esc(e.url)}">{esc(e.name)}</a> {mark}', esc(e.team), esc(e.pipeline),
                     fmt(e.student_params_b, 2), tier_marks(e.tier.energy, e.tier.containerised),
                     fmt(e.total_energy_j), fmt(e.energy_above_idle_j), fmt(e.j_per_trained_token, 4), *quality,
                     esc(e.submitted_at.strftime("%Y-%m-%d %H:%M")), f"<code>{esc(e.bundle_sha256[:12])}</code>"])
        classes.append("frontier" if mark else "")
    order = (f"ranked by the student's {esc(f.task)} score, then by total energy; ★ = on the Pareto frontier"
             if f.task else "ordered by total energy (choose a task to rank by quality)")
    headers = ["#", "entry", "team", "pipeline", "student B", "tier", "total J", "above idle J", "J/trained token",
               *(f"student {esc(t)}" for t in shown_tasks), "submitted (UTC)", "bundle"]
    body = (_filter_form(f, tasks, pipelines) + f'<p class="note">{len(entries)} entries, {order}. Every entry is a '
            "signed bundle that passed every verify check on arrival; tiers: <i>measured</i> = every energy figure "
            "from a hardware counter or integrated power (NVML, RAPL), <i>estimated</i> = some figure is an "
            "estimate.</p>" + (table(headers, rows, left=4, row_classes=classes) if rows else
                               "<p>No entries yet: <code>distill-kit submit BUNDLE --to URL</code>.</p>"))
    if f.task:
        body += f'<p><img src="/pareto/{quote(f.task)}.png" alt="Pareto plot {esc(f.task)}"></p>'
    return page("distill-kit leaderboard", body, NAV)


def pareto_page(frontiers: Sequence[ParetoOut]) -> str:
    parts = ['<p class="note">Quality of the student on each task vs the total energy of its whole pipeline '
             "(teacher included). An entry is on the frontier when no other reaches at least its quality with at "
             "most its energy.</p>"]
    for p in frontiers:
        ordered = sorted(p.points, key=lambda x: x.total_energy_j)
        rows = [[f'<a href="/entries/{esc(x.bundle_sha256)}">{esc(x.name)}</a>', esc(x.team), fmt(x.total_energy_j),
                 fmt(x.quality, 3), "yes" if x.on_frontier else ""] for x in ordered]
        parts += [f"<h2>{esc(p.task)}</h2>",
                  f'<img src="/pareto/{quote(p.task)}.png" alt="Pareto plot {esc(p.task)}">',
                  table(["entry", "team", "total J", "quality", "frontier"], rows,
                        row_classes=["frontier" if x.on_frontier else "" for x in ordered])]
    if not frontiers:
        parts.append("<p>No scored entries yet.</p>")
    return page("Pareto frontier: quality vs energy", "".join(parts), NAV)


def _stage_rows(stages: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for s in stages:
        tokens = f"{s['tokens']:,} {esc(str(s.get('token_kind') or '').replace('_tokens', ''))}" if s.get("tokens") \
            else "—"
        rows.append([esc(s.get("stage")), esc(s.get("kind")), esc(s.get("status")) + (
            f" ({s['attempts']} attempts)" if (s.get("attempts") or 0) > 1 else ""), fmt(s.get("wall_time_s")), tokens,
            *(energy_cell(s["energy"].get(d)) for d in DOMAINS), fmt(s.get("energy_total_j")),
            fmt(s.get("energy_above_idle_j")), fmt(s.get("j_per_token"), 4)])
    return rows


def entry_page(e: EntryDetail) -> str:
    headers = ["stage", "kind", "status", "time s", "tokens", "GPU J", "CPU J", "RAM J", "total J", "above idle J",
               "J/token"]
    models = sorted(e.scores)
    tasks = sorted({t for s in e.scores.values() for t in s})
    quality = table(["model", *map(esc, tasks)], [[esc(m), *(fmt(e.scores[m].get(t), 3) for t in tasks)]
                                                  for m in models]) if tasks else "<p>no scores</p>"
    evals = [[esc(t.get("model")), esc(t.get("task")), fmt(t.get("score"), 3), fmt(t.get("n"), 0),
              fmt(t.get("energy_j")), fmt(t.get("j_per_sample"), 3)] for t in e.eval_tasks]
    query = urlencode({"task": tasks[0]}) if tasks else ""
    body = (f"<p>team <b>{esc(e.team)}</b> · {esc(e.pipeline)} pipeline · student {fmt(e.student_params_b, 2)} B "
            f"params · {tier_marks(e.tier.energy, e.tier.containerised)}<br>"
            f"bundle <code>{esc(e.bundle_sha256)}</code> ({fmt(e.size_bytes, 0)} bytes, "
            f'<a href="{esc(e.bundle_url)}">download</a>) · signed by key <code>{esc(e.key_id[:16])}…</code> · '
            f"submitted {esc(e.submitted_at.strftime('%Y-%m-%d %H:%M:%S'))} UTC · "
            f'<a href="/?{esc(query)}">ranking</a></p>'
            f"<p>total {fmt(e.total_energy_j)} J (methods: {esc(', '.join(e.tier.methods))}), above idle "
            f"{fmt(e.energy_above_idle_j)} J, teacher stages {fmt(e.teacher_energy_j)} J, wall "
            f"{fmt(e.wall_time_s)} s, {fmt(e.j_per_trained_token, 4)} J per trained token</p>"
            "<h2>Stage energy breakdown</h2>" + table(headers, _stage_rows(e.stages), left=3) +
            '<p class="note">energy in J ± uncertainty; ctr = hardware counter, int = integrated power, est = '
            "estimate, n/a = unmeasured (hover for the reason)</p>"
            f'<img src="/entries/{esc(e.bundle_sha256)}/stages.png" alt="stage breakdown">'
            "<h2>Quality</h2>" + quality +
            ("<h3>Evaluation energy per task</h3>" + table(["model", "task", "score", "samples", "energy J",
                                                            "J/sample"], evals, left=2) if evals else "") +
            "<h2>Verify report (on arrival)</h2>" + verify_table(e.verify_report))
    return page(f"{e.name}", body, NAV)
