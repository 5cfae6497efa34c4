"""``distill-kit reproduce-eval``."""

from __future__ import annotations

from pathlib import Path

import typer

from distill_kit.cli.progress import wide
from distill_kit.errors import EXIT_FAILED

STYLE = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}


def _figure(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def register(app: typer.Typer) -> None:
    @app.command("reproduce-eval")
    def reproduce_eval(
        bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="The bundle (.tar) whose scores to re-run."),
        weights: Path = typer.Option(None, "--weights", help="The student's final weights (a folder with "
                                     "model.safetensors); default: the weights bundled with --include-large."),
    ) -> int:
        """Re-run the student's evaluation on the CPU and compare every score (exit 0 agree, 1 differ, 2 bad input)."""
        from rich.console import Console
        from rich.markup import escape

        from distill_kit.bundle.reproduce import TOLERANCE
        from distill_kit.bundle.reproduce import reproduce_eval as run

        console = Console(highlight=False, soft_wrap=True, width=wide())
        status = Console(stderr=True, highlight=False, soft_wrap=True, width=wide())
        results = run(bundle_path, weights, progress=lambda message: status.print(f"[dim]{escape(message)}[/dim]"))
        for r in results:
            rerun = r.note if r.status == "SKIP" else f"re-run {_figure(r.rerun_score)}"
            console.print(f"[{STYLE[r.status]}][{r.status}][/{STYLE[r.status]}] {escape(r.model)}/{escape(r.task)}: "
                          f"bundle {_figure(r.bundle_score)}, {escape(rerun)}")
        console.print(f"tolerance: {TOLERANCE}")
        return EXIT_FAILED if any(r.status == "FAIL" for r in results) else 0
