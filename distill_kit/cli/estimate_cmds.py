"""``distill-kit estimate``: a short calibrated rehearsal on this machine, then the full run's cost."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from distill_kit.cli.progress import wide
from distill_kit.errors import InvalidInput


def _interval(values: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    return (f"{values['mid'] * scale:,.{digits}f} ({values['low'] * scale:,.{digits}f}-"
            f"{values['high'] * scale:,.{digits}f})")


def print_estimate(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True, width=wide())
    table = Table(title=f"{report['name']}: estimated full run on {report['gpus']} GPU(s) of this machine "
                  "(mid (low-high))", title_justify="left")
    for column in ("stage", "tokens", "hours", "kWh", "basis"):
        table.add_column(column)
    for stage in report["stages"]:
        energy = stage["energy_j"]
        table.add_row(stage["stage"], f"{stage['tokens']:,}" if stage["tokens"] else "—",
                      _interval(stage["seconds"], 1 / 3600, 2), _interval(energy, 1 / 3.6e6, 3) if energy else "n/a",
                      stage["basis"])
    console.print(table)
    totals = report["totals"]
    line = f"total: {_interval(totals['wall_hours'], digits=1)} h wall, {_interval(totals['gpu_hours'])} GPU-hours"
    if "energy_kwh" in totals:
        line += f", {_interval(totals['energy_kwh'])} kWh"
    if "co2_kg" in totals:
        line += f", {_interval(totals['co2_kg'])} kg CO2 ({report['country']}, {report['carbon_g_per_kwh']:.0f} g/kWh)"
    console.print(line)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``timeout``, a scheduler, ``docker stop``) unwinds the calibration as Ctrl-C does.

    Python's default SIGTERM ends the process without running ``finally`` blocks: a killed 13B calibration left its
    temporary run folder (51 GB of checkpoints) behind on the GPU machine, and the next estimate's disk preflight
    refused to start. Raised as KeyboardInterrupt, the stage closes its energy window, the folder is removed and the
    command exits 130 like an interrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    @app.command()
    def estimate(
        manifest: str = typer.Argument(..., help="Manifest path or name."),
        gpus: int = typer.Option(1, "--gpus", min=1, help="GPUs the full run will use (wall time split over them, "
                                 "data parallel at 95% per added GPU; GPU-hours and energy not)."),
        country: str = typer.Option(None, "--country", help="ISO 3166 alpha-3 code for the CO2 figure "
                                    "(default: the manifest's country_iso_code)."),
        json_out: Path = typer.Option(None, "--json", help="Also write the estimate as JSON here."),
        run_dir: Path = typer.Option(None, "--run-dir", help="Where the calibration rehearsal runs (default: a "
                                     "temporary folder, removed after); kept, so a cut calibration can --resume."),
        resume: bool = typer.Option(False, "--resume", help="Continue the calibration cut off in --run-dir (same "
                                    "arguments): its finished stages are kept, the cut stage runs again."),
        calibration_tokens: str = typer.Option(None, "--calibration-tokens", help="Teacher and student tokens of "
                                               "the calibration (default: 400k teacher / 400k student on a GPU; a "
                                               "generating teacher: exactly 4 batches of prompts; an explicit cap "
                                               "counts prompt tokens)."),
        teacher_tokens: str = typer.Option(None, "--teacher-tokens", help="Full run's teacher tokens (default: "
                                           "the dataset's rows x mean length; a generating teacher: rows x samples "
                                           "x mean answer, in generated tokens)."),
        student_tokens: str = typer.Option(None, "--student-tokens", help="Full run's trained tokens (default: "
                                           "student.token_budget, else epochs x rows x mean length x loss share)."),
        set_: list[str] = typer.Option([], "--set", help="Override a manifest value: a.b.c=value (repeatable)."),
        reuse: list[Path] = typer.Option([], "--reuse", help="An earlier estimate's JSON (repeatable): a teacher or "
                                         "evaluation stage identical in settings, shapes and caps, measured on this "
                                         "same machine (GPU UUIDs, driver, code), is taken from it instead of "
                                         "rehearsed again (docs/estimate.md)."),
    ) -> int:
        """Rehearse each stage briefly here, then predict the full run: wall time, GPU-hours, kWh, CO2."""
        import shutil
        import tempfile

        from distill_kit._io import atomic_write_json
        from distill_kit.cli.progress import RichProgress
        from distill_kit.rehearsal.settings import parse_token_count
        from distill_kit.runner.estimate import estimate as run_estimate

        try:
            calibration = parse_token_count(calibration_tokens) if calibration_tokens else None
            teacher = parse_token_count(teacher_tokens) if teacher_tokens else None
            full = {"teacher_logits": teacher, "teacher_generation": teacher}
            full["kd"] = full["sft"] = parse_token_count(student_tokens) if student_tokens else None
        except ValueError as err:
            raise InvalidInput(str(err)) from err
        if resume and run_dir is None:
            raise InvalidInput("--resume continues a calibration kept in --run-dir: name that folder")
        caps = {"teacher_tokens": calibration, "student_tokens": calibration} if calibration else {}
        folder = run_dir or Path(tempfile.mkdtemp(prefix="distill-kit-estimate-")) / "run"
        try:
            with _terminate_as_interrupt():
                result = run_estimate(manifest, folder, gpus, country, caps, full, list(set_), RichProgress(),
                                      list(reuse), resume)
        finally:
            if run_dir is None:
                shutil.rmtree(folder.parent, ignore_errors=True)
        report = result.to_dict()
        print_estimate(report)
        if json_out is not None:
            atomic_write_json(json_out, report)
        return 0
