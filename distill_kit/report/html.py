"""Small HTML building blocks (escaped f-strings, one inline stylesheet, no external resource of any kind).

Shared by the offline report and the leaderboard's pages.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

from distill_kit.report.text import visible

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.1rem; margin-top: 1.4rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.frontier td { background: #fff1f0; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4rem 0; }
.note { color: #555; font-size: 0.85rem; } .warn { color: #a33; } .ok { color: #1a7f37; }
.tier { display: inline-block; padding: 0 0.4rem; border-radius: 0.6rem; font-size: 0.8rem; white-space: nowrap; }
.tier.measured { background: #dcf5e3; } .tier.estimated { background: #fff0c2; } .tier.unmeasured { background: #eee; }
.tier.container { background: #dde8fb; } .tier.local { background: #eee; }
.PASS { color: #1a7f37; } .WARN { color: #9a6700; } .FAIL { color: #cf222e; font-weight: bold; }
code { font-size: 0.85rem; } form { margin: 0.6rem 0; } input, select { margin-right: 0.6rem; }
nav a { margin-right: 1rem; }
.src { display: inline-block; padding: 0 0.35rem; border-radius: 0.5rem; font-size: 0.75rem; margin-left: 0.3rem; }
.src.fixture { background: #ffd8d3; color: #8a1c12; } .src.subset { background: #fff0c2; color: #6b4d00; }
.pm { color: #666; font-size: 0.8rem; }
"""

SHORT_METHOD = {"counter": "ctr", "integrated": "int", "estimate": "est", "unmeasured": "n/a"}


def esc(value: Any) -> str:
    """Text for HTML: hidden characters (controls, bidi overrides) shown as escapes, then HTML-escaped."""
    return html.escape(visible("" if value is None else str(value)), quote=True)


def fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    """A number for a table: thousands separators for big ones, ``—`` for None."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return esc(value)
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.3g}{unit}"
    if abs(value) >= 1e4:
        return f"{value:,.0f}{unit}"
    return f"{value:,.{digits}f}{unit}"


def energy_cell(figure: dict[str, Any] | None) -> str:
    """``1,234.5 ± 61.7 ctr`` (with ``partial``), or ``n/a`` with the reason as a tooltip."""
    if not figure or figure.get("energy_j") is None:
        reason = (figure or {}).get("reason") or "unmeasured"
        return f'<span title="{esc(reason)}">n/a</span>'
    partial = ", partial" if figure.get("partial") else ""
    method = SHORT_METHOD.get(figure.get("method", ""), esc(figure.get("method")))
    return f"{fmt(figure['energy_j'])} ± {fmt(figure.get('uncertainty_j'))} {method}{partial}"


def score_cell(score: Any, provenance: dict[str, Any] | None, digits: int = 3) -> str:
    """A quality score with ± its standard error, marked when it does not come from the full benchmark
    (``fixture``: the kit's few-row fixtures; ``subset``: part of it), with n; a score without provenance (an older
    run) is shown as it is."""
    text = fmt(score, digits)
    if not isinstance(provenance, dict):
        return text
    error = provenance.get("stderr")
    if isinstance(error, int | float) and not isinstance(error, bool):
        text += f' <span class="pm" title="{esc(provenance.get("stderr_method"))}">± {fmt(error, digits)}</span>'
    source = provenance.get("source")
    if source in ("fixture", "subset"):
        text += (f' <span class="src {source}" title="{esc(provenance.get("source_reason"))}">{source} '
                 f'n={fmt(provenance.get("n"), 0)}</span>')
    return text


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1,
          row_classes: Sequence[str] | None = None) -> str:
    """A table whose first ``left`` columns are left-aligned. Cells are HTML already (escape what you put in)."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{h}</th>' for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        css = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        cells = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def tier_marks(energy: str, containerised: bool) -> str:
    energy_text = {"measured": "measured (counter/RAPL)", "estimated": "estimated"}.get(energy, energy)
    return (f'<span class="tier {esc(energy)}">{esc(energy_text)}</span> '
            f'<span class="tier {"container" if containerised else "local"}">'
            f'{"containerised" if containerised else "not containerised"}</span>')


def verify_table(report: dict[str, Any]) -> str:
    rows = [[esc(r["name"]), f'<span class="{esc(r["status"])}">{esc(r["status"])}</span>', esc(r["reason"])]
            for r in report.get("results", [])]
    return table(["check", "status", "reason"], rows, left=3)


def page(title: str, body: str, nav: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
            f"<body>{nav}<h1>{esc(title)}</h1>{body}</body></html>\n")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"
