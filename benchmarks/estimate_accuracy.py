"""How good is ``distill-kit estimate``? kd_32b_1b is rehearsed twice on this machine: once at the estimate's
calibration length, from which the teacher and student stages are predicted at 5 times the tokens; then at 5 times
the tokens, measured. Figures: ``max_rel_error_time`` and ``max_rel_error_energy`` over the two stages (<= 0.10),
and each stage's errors.

Calibration length on one H200: ``distill-kit estimate``'s defaults (``runner.estimate.DEFAULT_CALIBRATION``), used
as they are: 400k real teacher tokens (about 55 s of 32B forward in length-grouped batches) and 400k trained student
tokens (about 24 optimizer steps of 4 x 16 sequences, 5 of them warm-up). The 5x run is then the 2M / 2M rehearsal
of benchmarks/rehearsal.py.

With ``--measured RUN_DIR`` the longer rehearsal is not run again: an earlier, finished ``benchmarks/rehearsal.py``
run (2M teacher and 2M student tokens: exactly 5x the default calibration) is the measurement, and only the
calibration runs here. Its teacher stage ran in the process that had just timed the bare forward (imports and the
GPU warm), so its fixed cost is, if anything, a little lower than a cold run's.

    python -m benchmarks.estimate_accuracy [--tiny] [--teacher-tokens 300k] [--student-tokens 600k] [--factor 5]
                                           [--measured runs/bench-rehearsal/run]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import write_result
from distill_kit.rehearsal.settings import parse_token_count

NAME = "estimate_accuracy"
TARGETS = {"max_rel_error_time": "<= 0.10", "max_rel_error_energy": "<= 0.10"}
STAGES = ("teacher", "student")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] estimate_accuracy: {message}", flush=True)


def measure_fresh(manifest: str, run_dir: Path, caps: dict[str, int], overrides: list[str]) -> dict[str, Any]:
    """The longer rehearsal as a user would run it: ``distill-kit run --rehearse`` in a fresh process (a second run
    in this process would find imports, kernels and compiled graphs warm, which a real run never does)."""
    import subprocess

    sets = [f"rehearsal.{key}={value}" for key, value in caps.items()] + overrides
    command = [sys.executable, "-m", "distill_kit", "run", manifest, "--run-dir", str(run_dir), "--runtime", "local",
               "--rehearse", *[arg for item in sets for arg in ("--set", item)]]
    say("measuring: " + " ".join(command[1:]))
    subprocess.run(command, check=True)
    return stage_measurements(run_dir)


def stage_measurements(run_dir: Path) -> dict[str, Any]:
    from distill_kit._io import read_json
    from distill_kit.runner.estimate import StageCalibration, stage_energy_j

    out = {}
    for stage in STAGES:
        summary = read_json(run_dir / "stages" / stage / "summary.json")
        out[stage] = StageCalibration(stage, summary["kind"], summary["token_kind"], summary["tokens"],
                                      summary["wall_time_s"], stage_energy_j(summary))
    return out


def measured_run(run_dir: Path, caps: dict[str, int]) -> dict[str, Any]:
    """The teacher and student stages of a finished rehearsal whose token caps are ``caps`` (refused otherwise)."""
    from distill_kit._io import read_json

    rehearsal = read_json(run_dir / "manifest.resolved.json").get("rehearsal") or {}
    for key in ("teacher_tokens", "student_tokens"):
        if int(rehearsal.get(key) or 0) != caps[key]:
            raise SystemExit(f"{run_dir}: rehearsal.{key} is {rehearsal.get(key)}, the comparison needs {caps[key]}")
    return stage_measurements(run_dir)


def full_run_estimate(manifest: str, calibration: Any) -> None:
    """``estimate_<manifest>.json`` beside the results, as ``distill-kit estimate MANIFEST --json`` writes it from
    the same calibration (default caps and prerun)."""
    from benchmarks._common import results_dir
    from distill_kit._io import atomic_write_json
    from distill_kit.manifest import load_manifest
    from distill_kit.manifest.settings import Settings
    from distill_kit.runner.estimate import calibrations, full_tokens, predict

    document = load_manifest(manifest, []).document
    estimate = predict(document, calibrations(calibration.run_dir, calibration.timing), 1,
                       Settings.of(document).country_iso_code, full_tokens(document))
    atomic_write_json(results_dir() / f"estimate_{manifest}.json", estimate.to_dict())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.estimate_accuracy")
    parser.add_argument("--tiny", action="store_true", help="the smoke manifest's tiny shapes (CPU)")
    parser.add_argument("--teacher-tokens", type=parse_token_count, default=None)
    parser.add_argument("--student-tokens", type=parse_token_count, default=None)
    parser.add_argument("--factor", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--measured", type=Path, default=None,
                        help="a finished rehearsal of factor x the calibration's tokens, taken as the measurement")
    args = parser.parse_args(argv)
    from distill_kit.cli.progress import RichProgress
    from distill_kit.runner.estimate import calibrations, predict_stage
    from distill_kit.runner.rehearse import rehearse

    manifest = "smoke-kd" if args.tiny else "kd_32b_1b"
    from distill_kit.runner.estimate import CALIBRATION_PRERUN, CPU_CALIBRATION, DEFAULT_CALIBRATION

    default = CPU_CALIBRATION if args.tiny else DEFAULT_CALIBRATION
    teacher = args.teacher_tokens or default["teacher_tokens"]
    student = args.student_tokens or default["student_tokens"]
    overrides = ["energy.idle_seconds=1", "energy.burn_in_seconds=0"] if args.tiny else CALIBRATION_PRERUN
    eval_tokens = default["eval_tokens"]
    work = args.work or Path(tempfile.mkdtemp(prefix="estimate-accuracy-"))
    details: dict[str, Any] = {"manifest": manifest, "factor": args.factor, "overrides": overrides}
    figures: dict[str, float | None] = {}
    caps = {"teacher_tokens": teacher * args.factor, "student_tokens": student * args.factor,
            "eval_tokens": eval_tokens}
    measured = measured_run(args.measured, caps) if args.measured is not None else None  # checked before calibrating
    say(f"calibration: {manifest}, teacher {teacher:,} tokens, student {student:,} tokens")
    calibration = rehearse(manifest, work / "calibration", {"teacher_tokens": teacher, "student_tokens": student,
                                                             "eval_tokens": eval_tokens}, overrides, RichProgress())
    stages = {c.stage: c for c in calibrations(calibration.run_dir, calibration.timing)}
    predicted = {name: predict_stage(stages[name], (teacher if name == "teacher" else student) * args.factor)
                 for name in STAGES}
    details["calibration"] = {name: stages[name].to_dict() for name in STAGES}
    details["calibration_loops"] = calibration.timing.to_list()  # every item's (time, tokens)
    details["predicted"] = {name: p.to_dict() for name, p in predicted.items()}
    write_result(NAME, figures, TARGETS, {**details, "phase": "calibrated"})
    if not args.tiny:  # this calibration is `distill-kit estimate kd_32b_1b`'s own: its full-run estimate too
        full_run_estimate(manifest, calibration)
    say("predicted: " + "; ".join(f"{n} {p.seconds.mid:.1f} s, {p.energy_j.mid if p.energy_j else float('nan'):.0f} J"
                                  for n, p in predicted.items()))
    if measured is not None:
        actual = measured
        details["measured_run"] = str(args.measured)
    else:
        actual = measure_fresh(manifest, work / "measured", caps, overrides)
    errors: dict[str, dict[str, float | None]] = {}
    for name in STAGES:
        p, m = predicted[name], actual[name]
        time_error = abs(p.seconds.mid - m.wall_s) / m.wall_s
        energy_error = (abs(p.energy_j.mid - m.energy_j) / m.energy_j
                        if p.energy_j is not None and m.energy_j else None)
        errors[name] = {"time": time_error, "energy": energy_error, "measured_s": m.wall_s,
                        "measured_j": m.energy_j, "inside_time_interval": p.seconds.low <= m.wall_s <= p.seconds.high}
        figures[f"rel_error_time_{name}"] = time_error
        figures[f"rel_error_energy_{name}"] = energy_error
    figures["max_rel_error_time"] = max(e["time"] for e in errors.values())  # type: ignore[type-var]
    energy_errors = [e["energy"] for e in errors.values() if e["energy"] is not None]
    figures["max_rel_error_energy"] = max(energy_errors) if len(energy_errors) == len(STAGES) else None
    details["errors"] = errors
    say(f"errors: {errors}")
    write_result(NAME, figures, TARGETS, {**details, "phase": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
