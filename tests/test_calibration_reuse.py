"""`distill-kit estimate --reuse EARLIER.json` (issue 17): a teacher or evaluation stage identical in what decides
its cost, measured on this same machine, is taken from the earlier estimate instead of rehearsed again; the
teacher then runs as a one-layer stand-in for the stages after it, a reused evaluation is not run at all; a stage
that differs, or another machine, is measured anew; a file that is not an estimate is refused (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_no_traceback, run_cli

SMALL = ["--set", "teacher.generation.batch_size=25", "--set", "rehearsal.eval_tokens=256"]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _calibration(report: dict, stage: str) -> dict:
    return next(c for c in report["calibration"] if c["stage"] == stage)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """smoke-sft's estimate, every stage rehearsed: the file later estimates reuse."""
    work = tmp_path_factory.mktemp("reuse")
    result = run_cli("estimate", "smoke-sft", "--json", str(work / "a.json"), *SMALL)
    assert result.returncode == 0, result.output
    return work / "a.json"


def test_an_identical_teacher_and_evaluation_are_reused_and_the_student_is_measured_again(earlier, tmp_path):
    first = _json(earlier)
    assert all(_calibration(first, s)["fingerprint"] for s in ("teacher", "eval"))
    assert _calibration(first, "student")["fingerprint"] is None  # the student is what the manifests vary
    run_dir = tmp_path / "run"
    result = run_cli("estimate", "smoke-sft", "--json", str(tmp_path / "b.json"), "--reuse", str(earlier),
                     "--run-dir", str(run_dir), *SMALL, "--set", "student.optimizer.lr=1.0e-4")
    assert result.returncode == 0, result.output
    second = _json(tmp_path / "b.json")
    for stage in ("teacher", "eval"):
        reused = _calibration(second, stage)
        assert reused["reused_from"]["estimate"] == "smoke-sft" and reused["reused_from"]["file"] == str(earlier)
        assert reused["windows"] == _calibration(first, stage)["windows"]
        prediction = next(p for p in second["stages"] if p["stage"] == stage)
        assert prediction == {**next(p for p in first["stages"] if p["stage"] == stage),
                              "basis": prediction["basis"]}  # the same figures, its basis saying where from
        assert "calibration reused from the identical stage of smoke-sft's estimate" in prediction["basis"]
    assert _calibration(second, "student")["reused_from"] is None  # rehearsed again
    teacher = _json(run_dir / "stages" / "teacher" / "summary.json")
    assert teacher["outputs"]["rehearsal"]["stand_in_teacher"] is True  # made the student's data, not its cost
    assert not (run_dir / "stages" / "eval" / "summary.json").exists()  # a reused evaluation is not run
    assert [p["stage"] for p in second["stages"]] == [p["stage"] for p in first["stages"]]


def test_another_machine_or_other_teacher_settings_are_measured_anew(earlier, tmp_path, monkeypatch):
    from distill_kit.manifest import load_manifest
    from distill_kit.runner import calibration_reuse
    from distill_kit.runner.estimate import estimate

    def inputs(*sets: str) -> dict:
        return calibration_reuse.stage_inputs(load_manifest("smoke-sft", list(sets)).document, "teacher_generation")

    assert inputs("student.optimizer.lr=1.0e-4") == inputs()
    assert inputs("teacher.generation.batch_size=5") != inputs()  # any teacher setting: never reused across it

    real = calibration_reuse.machine_identity()
    other = {**real, "gpus": [["NVIDIA H200", "GPU-00000000-another-one", "580.159.04"]]}
    monkeypatch.setattr(calibration_reuse, "machine_identity", lambda: other)
    result = estimate("smoke-sft", tmp_path / "run", overrides=SMALL[1::2], reuse=[earlier])
    assert all(c.reused_from is None for c in result.calibration)
    teacher = _json(tmp_path / "run" / "stages" / "teacher" / "summary.json")
    assert "stand_in_teacher" not in teacher["outputs"]["rehearsal"]


@pytest.mark.parametrize("content, message", [
    (None, "not a readable estimate JSON"),
    ("{not json", "not a readable estimate JSON"),
    ('{"name": "x"}', "not the JSON of distill-kit estimate"),
    ("[1, 2]", "not the JSON of distill-kit estimate"),
])
def test_a_reuse_file_that_is_not_an_estimate_is_refused(tmp_path, content, message):
    path = tmp_path / "earlier.json"
    if content is not None:
        path.write_text(content)
    result = run_cli("estimate", "smoke-sft", "--reuse", str(path), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.output
    assert_no_traceback(result)
    assert message in result.output
    assert not (tmp_path / "run").exists()


def test_a_damaged_calibration_in_a_reuse_file_is_named_not_a_traceback(earlier, tmp_path):
    damaged = _json(earlier)
    del _calibration(damaged, "teacher")["windows"]
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(damaged))
    result = run_cli("estimate", "smoke-sft", "--reuse", str(path), "--run-dir", str(tmp_path / "run"), *SMALL)
    assert result.returncode == 2, result.output
    assert_no_traceback(result)
    assert f"--reuse {path}: its 'teacher' calibration is incomplete" in result.output
    assert not (tmp_path / "run").exists()
