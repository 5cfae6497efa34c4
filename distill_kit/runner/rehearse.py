"""Run a rehearsal in this process (estimate, benchmarks): the kit's runner on the rehearsed manifest, with every
loop's items timestamped and, on GPUs, each stage's peak allocated memory recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill_kit.runner.execute import Runner
from distill_kit.runner.timing import TimingProgress
from distill_kit.stages.base import Progress


@dataclass
class Rehearsed:
    run_dir: Path
    summary: dict[str, Any] | None  # None when stopped after a stage (``stop_after``)
    timing: TimingProgress
    peak_gib: dict[str, float] = field(default_factory=dict)  # stage -> torch's peak allocated memory (GPU runs)


class _Stopped(Exception):
    """Raised after the ``stop_after`` stage: the run is left unfinished, to be resumed."""


class _PeakRunner(Runner):
    """The runner, reading torch's peak allocated GPU memory around each stage (and stopping after one, where
    asked: a long rehearsal split over two calls of a time-limited machine resumes as any run does)."""

    peaks: dict[str, float]
    stop_after: str | None = None
    timing_path: Path | None = None  # where the loops' timestamps are kept after every finished stage

    def _stage(self, planned: Any, device: str) -> dict[str, Any]:
        import torch

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        summary = super()._stage(planned, device)
        if device == "cuda":
            self.peaks[planned.name] = torch.cuda.max_memory_allocated() / 2**30
        if self.timing_path is not None and isinstance(self.progress, TimingProgress):
            from distill_kit._io import atomic_write_json

            atomic_write_json(self.timing_path, self.progress.to_list())  # a cut calibration keeps what finished
        if planned.name == self.stop_after:
            raise _Stopped(planned.name)
        return summary


def rehearsal_manifest(manifest: str, caps: dict[str, int], overrides: list[str]) -> Any:
    from distill_kit.manifest import load_manifest

    sets = ["rehearsal.enabled=true", *[f"rehearsal.{key}={value}" for key, value in caps.items()], *overrides]
    return load_manifest(manifest, sets)


def rehearse(manifest: str, run_dir: Path, caps: dict[str, int], overrides: list[str] | None = None,
             progress: Progress | None = None, stop_after: str | None = None, resume: bool = False,
             timing: TimingProgress | None = None, timing_path: Path | None = None) -> Rehearsed:
    """Rehearse ``manifest`` into ``run_dir`` (new, or an unfinished one with ``resume``) with the token ``caps``
    (teacher_tokens, student_tokens, eval_tokens) and extra ``--set`` overrides; ``stop_after`` a stage name leaves
    the run unfinished after it."""
    resolved = rehearsal_manifest(manifest, caps, overrides or [])
    timing = timing or TimingProgress(progress)
    runner = _PeakRunner(resolved, run_dir, timing, runtime="local")
    runner.peaks, runner.stop_after, runner.timing_path = {}, stop_after, timing_path
    try:
        outcome = runner.execute(resume=resume)
    except _Stopped:
        return Rehearsed(run_dir, None, timing, runner.peaks)
    return Rehearsed(outcome.run_dir, outcome.summary, timing, runner.peaks)
