"""``run`` beyond the whole pipeline: --stages and --from-run, eval-only manifests and --tasks, a checkpoint file as
the model, the preflight, and --resume with a changed manifest. Every README example of that section runs here
(with its run directories under tmp and the smoke runs scaled down further by ``FAST``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_no_traceback, kill_when, read_json, run_cli, spawn_cli

pytestmark = pytest.mark.slow

# Tiny data and budgets: a partial smoke-kd run takes seconds, not minutes, on a busy 2-core machine.
FAST = ["--set", "data.train.max_examples=48", "--set", "student.token_budget=12000",
        "--set", "student.checkpoint_every_steps=5", "--set", "energy.idle_seconds=1",
        "--set", "energy.burn_in_seconds=0", "--set", "eval.limit=10", "--set", "eval.tasks=[tiny_task]",
        "--runtime", "local"]
EVAL_FAST = ["--set", "eval.limit=10", "--runtime", "local"]
README = (REPO / "README.md").read_text()

EXAMPLES = {
    "teacher": "distill-kit run smoke-kd --run-dir runs/teacher --stages prerun,teacher",
    "student": "distill-kit run smoke-kd --run-dir runs/student --stages student,eval --from-run runs/teacher",
    "eval": "distill-kit run smoke-eval --run-dir runs/eval --tasks tiny_task,gsm8k",
    "checkpoint": ('distill-kit run smoke-eval --run-dir runs/ckpt --set "models.student={source: local, id: '
                   '$PWD/runs/student/stages/student/final/model.safetensors, architecture: {source: builtin, id: '
                   'tiny-student}}"'),
    "preflight": "distill-kit run kd_32b_1b --run-dir runs/kd --dry-run",
    "resume": "distill-kit run smoke-eval --run-dir runs/eval2 --resume --tasks tiny_task,mmlu",
}


def example(name: str, root: Path) -> list[str]:
    """The README's example command ``name`` as CLI arguments, with ``runs/`` and ``$PWD`` under ``root``."""
    command = EXAMPLES[name]
    assert command in README, f"README lost its example: {command}"
    import shlex

    return shlex.split(command.replace("$PWD/runs/", f"{root}/").replace("runs/", f"{root}/"))[1:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("keys") / "signer"
    assert run_cli("keygen", "--out", str(prefix)).returncode == 0
    return prefix


@pytest.fixture(scope="module")
def teacher_run(runs) -> Path:
    result = run_cli(*example("teacher", runs), *FAST)
    assert result.returncode == 0, result.output
    return runs / "teacher"


@pytest.fixture(scope="module")
def student_run(runs, teacher_run) -> Path:
    result = run_cli(*example("student", runs), *FAST)
    assert result.returncode == 0, result.output
    return runs / "student"


def bundle_and_verify(run_dir: Path, keys: Path, tmp_path: Path):
    bundle = tmp_path / f"{run_dir.name}.tar"
    packed = run_cli("bundle", str(run_dir), "--out", str(bundle), "--key", f"{keys}.key")
    assert packed.returncode == 0, packed.output
    return run_cli("verify", str(bundle), "--trusted-key", f"{keys}.pub")


# -- 1. stage-only and partial runs ----------------------------------------------------------------------------
def test_a_stage_only_run_is_measured_recorded_and_verifies(teacher_run, keys, tmp_path):
    summary = read_json(teacher_run / "summary.json")
    assert [s["stage"] for s in summary["stages"]] == ["prerun", "teacher"]
    assert summary["selection"] == {"pipeline_stages": ["prerun", "teacher", "student", "eval"],
                                    "stages_run": ["prerun", "teacher"], "inputs_from": None}
    assert read_json(teacher_run / "manifest.resolved.json")["stages"] == ["prerun", "teacher"]
    assert summary["stages"][1]["energy_total_j"] > 0
    assert (teacher_run / "stages" / "teacher" / "cache" / "index.json").exists()
    verified = bundle_and_verify(teacher_run, keys, tmp_path)
    assert verified.returncode == 0, verified.output
    assert "a partial run of prerun, teacher" in verified.stdout


def test_a_later_stage_reads_the_earlier_run_and_says_why_it_has_no_energy_above_idle(student_run, teacher_run,
                                                                                       keys, tmp_path):
    summary = read_json(student_run / "summary.json")
    inputs = summary["selection"]["inputs_from"]
    assert inputs["run_dir"] == str(teacher_run.resolve()) and list(inputs["stages"]) == ["teacher"]
    assert inputs["manifest_sha256"] == read_json(teacher_run / "summary.json")["manifest_sha256"]
    student = read_json(student_run / "stages" / "student" / "summary.json")
    assert student["status"] == "finished" and student["tokens"] >= 12000
    assert student["energy_above_idle_j"] is None
    assert "the prerun is not among the stages run (student, eval)" in student["energy_above_idle_reason"]
    assert summary["totals"]["energy_above_idle_j"] is None
    verified = bundle_and_verify(student_run, keys, tmp_path)
    assert verified.returncode == 0, verified.output
    assert "reading teacher from run" in verified.stdout


def test_a_later_stage_without_its_inputs_exits_2_before_anything_runs(tmp_path):
    result = run_cli("run", "smoke-kd", "--run-dir", str(tmp_path / "x"), "--stages", "student", *FAST)
    assert result.returncode == 2, result.output
    assert "stage 'student' reads the outputs of 'teacher', which this run does not run" in result.stderr
    assert "--from-run DIR" in result.stderr
    assert_no_traceback(result)
    assert not (tmp_path / "x").exists()


def test_from_run_with_other_teacher_settings_exits_2(teacher_run, tmp_path):
    result = run_cli("run", "smoke-kd", "--run-dir", str(tmp_path / "x"), "--stages", "student",
                     "--from-run", str(teacher_run), *FAST, "--set", "teacher.logits.top_k=4")
    assert result.returncode == 2, result.output
    assert "teacher.logits.top_k (affects teacher" in result.stderr
    assert not (tmp_path / "x").exists()


def test_from_run_whose_finished_teacher_lost_its_cache_exits_2(teacher_run, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(teacher_run, damaged)
    (damaged / "stages" / "teacher" / "cache" / "index.json").unlink()
    result = run_cli("run", "smoke-kd", "--run-dir", str(tmp_path / "x"), "--stages", "student",
                     "--from-run", str(damaged), *FAST)
    assert result.returncode == 2, result.output
    assert "its 'teacher' stage says it finished but its outputs are missing: cache/index.json" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_stage_name_the_pipeline_lacks_exits_2(tmp_path):
    result = run_cli("run", "smoke-kd", "--run-dir", str(tmp_path / "x"), "--stages", "teacher,filter", *FAST)
    assert result.returncode == 2, result.output
    assert "$.stages: pipeline 'kd' has no stage 'filter'" in result.stderr


def test_a_finished_partial_run_is_never_extended_in_place(teacher_run):
    result = run_cli("run", "smoke-kd", "--run-dir", str(teacher_run), "--resume", "--stages", "student", *FAST)
    assert result.returncode == 2, result.output
    assert f"give --from-run {teacher_run} with a new --run-dir" in result.stderr


def test_verify_fails_a_stage_the_run_says_finished_but_left_no_outputs(teacher_run, keys, tmp_path):
    forged = tmp_path / "forged"
    shutil.copytree(teacher_run, forged)
    shutil.rmtree(forged / "stages" / "teacher" / "cache")
    verified = bundle_and_verify(forged, keys, tmp_path)
    assert verified.returncode == 1, verified.output
    assert re.search(r"\[FAIL\] required-files: stage outputs missing .*run/stages/teacher/cache/index.json",
                     verified.stdout)


def test_verify_fails_a_partial_run_whose_summary_hides_that_it_is_partial(teacher_run, keys, tmp_path):
    forged = tmp_path / "forged-full"
    shutil.copytree(teacher_run, forged)
    summary = read_json(forged / "summary.json")
    del summary["selection"]  # as if the pipeline had run whole
    (forged / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    verified = bundle_and_verify(forged, keys, tmp_path)
    assert verified.returncode == 1, verified.output
    assert re.search(r"\[FAIL\] identity: .*summary.json selection \(got None, expected \{.*'stages_run': "
                     r"\['prerun', 'teacher'\]", verified.stdout)


# -- 2. eval-only manifests, --tasks ---------------------------------------------------------------------------
def test_an_eval_only_manifest_needs_no_training_data_nor_prerun_and_takes_tasks_from_the_cli(runs, keys, tmp_path):
    result = run_cli(*example("eval", runs), *EVAL_FAST)
    assert result.returncode == 0, result.output
    run_dir = runs / "eval"
    resolved = read_json(run_dir / "manifest.resolved.json")
    assert resolved["eval"]["tasks"] == ["tiny_task", "gsm8k"] and "train" not in resolved["data"]
    summary = read_json(run_dir / "summary.json")
    assert [s["stage"] for s in summary["stages"]] == ["eval"]
    assert set(summary["quality"]["student"]) == {"tiny_task", "gsm8k"}
    assert summary["totals"]["energy_above_idle_reason"] == "no idle baseline: the prerun is off (energy.prerun: false)"
    verified = bundle_and_verify(run_dir, keys, tmp_path)
    assert verified.returncode == 0, verified.output


# -- 3. a checkpoint file as the model -------------------------------------------------------------------------
def test_a_checkpoint_file_is_converted_and_both_digests_recorded(runs, student_run):
    result = run_cli(*example("checkpoint", runs), *EVAL_FAST)
    assert result.returncode == 0, result.output
    assert "Repo id must be in the form" not in result.output
    weights = student_run / "stages" / "student" / "final" / "model.safetensors"
    record = read_json(runs / "ckpt" / "stages" / "eval" / "summary.json")["outputs"]["compute"]["checkpoints"]
    student = record["student"]
    from distill_kit._io import sha256_file

    assert student["checkpoint_sha256"] == sha256_file(weights)
    assert student["weights_sha256"] == sha256_file(weights)  # the same tensors, re-saved
    assert re.fullmatch(r"[0-9a-f]{64}", student["folder_sha256"])
    assert student["architecture"] == {"source": "builtin", "id": "tiny-student"}


def test_a_pt_state_dict_of_another_architecture_exits_2_naming_the_misfit(tmp_path):
    import torch
    from safetensors.torch import load_file

    from distill_kit.assets.resolve import TINY_DIR

    state = load_file(str(TINY_DIR / "teacher" / "model.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "teacher.pt")
    ref = f"{{source: local, id: {tmp_path}/teacher.pt, architecture: {{source: builtin, id: tiny-student}}}}"
    result = run_cli("run", "smoke-eval", "--run-dir", str(tmp_path / "x"), "--set", f"models.student={ref}",
                     *EVAL_FAST, env={"DISTILL_KIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.output
    assert "does not fit the architecture" in result.stderr
    assert_no_traceback(result)
    assert not (tmp_path / "x").exists()


def test_a_checkpoint_without_an_architecture_says_what_to_add(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 16)
    ref = f"{{source: local, id: {tmp_path}/w.safetensors}}"
    result = run_cli("run", "smoke-eval", "--run-dir", str(tmp_path / "x"), "--set", f"models.student={ref}",
                     "--dry-run", *EVAL_FAST)
    assert result.returncode == 2, result.output
    assert "needs its architecture: add architecture:" in result.stderr
    assert "Repo id must be in the form" not in result.output


# -- 4. preflight ----------------------------------------------------------------------------------------------
def test_dry_run_of_a_run_that_could_not_start_exits_2_and_says_what_to_do(runs):
    result = run_cli(*example("preflight", runs), "--runtime", "local",
                     env={"DISTILL_KIT_CACHE": str(runs / "empty-cache")})
    assert result.returncode == 2, result.output
    assert "the run cannot start" in result.stderr and "nothing was run" in result.stderr
    assert "run `distill-kit assets fetch kd_32b_1b` first" in result.stderr
    assert "allenai/OLMo-2-0325-32B-SFT" in result.stderr
    assert not (runs / "kd").exists()


def test_run_fails_the_same_way_before_the_prerun(tmp_path):
    result = run_cli("run", "kd_32b_1b", "--run-dir", str(tmp_path / "kd"), "--runtime", "local",
                     env={"DISTILL_KIT_CACHE": str(tmp_path / "empty-cache")}, timeout=120)
    assert result.returncode == 2, result.output
    assert "run `distill-kit assets fetch kd_32b_1b` first" in result.stderr
    assert "prerun: measuring idle power" not in result.output
    assert not (tmp_path / "kd").exists()


@pytest.mark.parametrize("args, message", [
    (["--set", "hardware.accelerator=cuda", "--set", "hardware.min_gpu_memory_gib=100000"], "accelerator: hardware."),
    (["--tasks", "tiny_task,alpaca_eval"], "judges: alpaca_eval need(s) a judge: set eval.judge"),
])
def test_preflight_names_unmet_hardware_and_missing_judges(tmp_path, args, message):
    for dry in ([], ["--dry-run"]):
        result = run_cli("run", "smoke-eval", "--run-dir", str(tmp_path / "x"), *args, *dry, *EVAL_FAST)
        assert result.returncode == 2, result.output
        assert message in result.stderr
        assert_no_traceback(result)
        assert not (tmp_path / "x").exists()


def test_preflight_refuses_a_run_dir_without_room_for_its_outputs(tmp_path, monkeypatch):
    import shutil as shutil_module

    from distill_kit.manifest import load_manifest
    from distill_kit.runner.plan import plan
    from distill_kit.runner.preflight import PreflightFailed, disk_estimate, require_preflight

    manifest = load_manifest("smoke-kd")
    needed = disk_estimate(manifest.document, ["teacher", "student"], "smoke-kd")
    assert needed["teacher logit cache"] > 0 and needed["student checkpoints (last two + final)"] > 0
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda _path: usage._replace(free=1000))
    with pytest.raises(PreflightFailed, match=r"disk: the stages will write about .* GiB free: free space or "
                                              "choose another --run-dir"):
        require_preflight(manifest, tmp_path / "run", plan(manifest))


def test_a_rehearsal_counts_only_the_step_checkpoints_its_token_cap_reaches():
    """A 7B calibration (400k trained tokens, ~17 optimizer steps) writes its final save only; 40M tokens reach
    checkpoint_every_steps and keep the last two (the device refused a 7B estimate for 91 GiB it never wrote)."""
    from distill_kit.runner.preflight import disk_estimate
    from distill_kit.runner.rehearse import rehearsal_manifest

    def parts(student_tokens: int) -> dict[str, int]:
        manifest = rehearsal_manifest("kd_32b_7b", {"student_tokens": student_tokens}, [])
        return disk_estimate(manifest.document, ["teacher", "student"], manifest.source)

    short, long_ = parts(400_000), parts(40_000_000)
    assert list(short) == ["student checkpoints (0 + final)"]
    assert list(long_) == ["student checkpoints (last two + final)"]
    params = 7e9  # the manifest's params_b; Adafactor: 4 + 1 bytes a parameter per step checkpoint, 4 the final
    assert short["student checkpoints (0 + final)"] == int(params * 4)
    assert long_["student checkpoints (last two + final)"] == int(params * (2 * 5 + 4))


# -- 5. --resume with a changed manifest -----------------------------------------------------------------------
SLOW_PRERUN = ["--set", "energy.prerun=true", "--set", "energy.idle_seconds=10", "--set",
               "energy.sample_interval_ms=200"]


def _interrupted_eval_run(run_dir: Path) -> None:
    """An eval-only run killed in its (slow) prerun: the eval stage has not started."""
    proc = spawn_cli("run", "smoke-eval", "--run-dir", str(run_dir), *SLOW_PRERUN, *EVAL_FAST)

    def prerun_sampled() -> bool:  # 5 s of samples: a killed attempt's coverage counts from its journaled start
        trace = run_dir / "stages" / "prerun" / "trace.attempt1.csv"
        try:
            return len(trace.read_text().splitlines()) > 25
        except OSError:
            return False

    kill_when(proc, prerun_sampled, timeout=120)


def test_resume_accepts_changes_to_stages_not_started_and_verify_recomputes_them(runs, keys, tmp_path):
    run_dir = runs / "eval2"
    _interrupted_eval_run(run_dir)
    refused = run_cli("run", "smoke-eval", "--run-dir", str(run_dir), "--resume", *SLOW_PRERUN,
                      "--set", "energy.idle_seconds=1", *EVAL_FAST)
    assert refused.returncode == 2, refused.output
    assert "these changes touch stages that have already started: energy.idle_seconds (affects prerun" \
        in refused.stderr
    result = run_cli(*example("resume", runs), *SLOW_PRERUN, *EVAL_FAST)
    assert result.returncode == 0, result.output
    assert "manifest changed since the run started: eval.tasks (affects eval, not started): accepted" in result.stderr
    assert read_json(run_dir / "manifest.resolved.json")["eval"]["tasks"] == ["tiny_task", "mmlu"]
    resumed = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()
               if '"run_resumed"' in line][-1]
    assert resumed["manifest_changed"]["changes"] == {"eval.tasks": ["eval"]}
    verified = bundle_and_verify(run_dir, keys, tmp_path)
    assert verified.returncode == 0, verified.output


def test_a_forged_manifest_change_to_a_started_stage_fails_verify(runs, keys, tmp_path):
    run_dir = runs / "eval2"
    if not (run_dir / "summary.json").exists():
        pytest.skip("needs the resumed run of the previous test")
    forged = tmp_path / "forged-resume"
    shutil.copytree(run_dir, forged)
    journal = forged / "journal.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    for entry in lines:  # claim the change came after the eval stage had started, as a resume must not
        if entry["event"] == "run_resumed" and "manifest_changed" in entry:
            resumed = entry
    lines.remove(resumed)
    lines.append(resumed)
    journal.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in lines))
    verified = bundle_and_verify(forged, keys, tmp_path)
    assert verified.returncode == 1, verified.output
    assert "[FAIL] identity" in verified.stdout
