"""Shape rehearsal of the synthetic-data SFT pipeline (issue 17): the teacher generates from random weights on
random prompts of the data's lengths, answers as long as their drawn lengths; the filter and the student run on
those generations; verify WARNs; estimate times the generation; the planner sizes its KV cache; a rehearsal killed
after the teacher resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distill_kit.generation.shards import read_generations
from tests.conftest import assert_no_traceback, kill_when, run_cli, spawn_cli

# 1,500 prompt tokens of the tiny task (about 150 prompts) in batches of 25; 2,000 trained tokens
RUN = ["--runtime", "local", "--rehearse", "--set", "rehearsal.teacher_tokens=1500", "--set",
       "rehearsal.student_tokens=2000", "--set", "rehearsal.eval_tokens=256", "--set",
       "teacher.generation.batch_size=25", "--set", "energy.idle_seconds=1", "--set", "energy.burn_in_seconds=0"]
MAX_NEW_TOKENS = 16  # smoke-sft's teacher.generation.max_new_tokens


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("rehearsal-sft")
    run_dir = work / "run"
    result = run_cli("run", "smoke-sft", "--run-dir", str(run_dir), *RUN)
    assert result.returncode == 0, result.output
    assert run_cli("keygen", "--out", str(work / "key")).returncode == 0
    bundled = run_cli("bundle", str(run_dir), "--out", str(work / "bundle.tar"), "--key", str(work / "key.key"))
    assert bundled.returncode == 0, bundled.output
    return {"run": run_dir, "bundle": work / "bundle.tar", "pub": work / "key.pub"}


def test_a_rehearsed_sft_run_runs_every_stage_and_verifies_with_the_rehearsal_warning(rehearsed):
    run = rehearsed["run"]
    summary = _json(run / "summary.json")
    assert summary["rehearsal"] is True
    assert [s["stage"] for s in summary["stages"]] == ["prerun", "teacher", "filter", "student", "eval"]
    teacher = _json(run / "stages" / "teacher" / "summary.json")["outputs"]
    assert teacher["prompt_tokens"] == 1500 and teacher["rehearsal"]["teacher_tokens"] == 1500
    assert teacher["backend"]["why"].startswith("rehearsal")
    filtered = _json(run / "stages" / "filter" / "summary.json")["outputs"]
    assert [f["name"] for f in filtered["filters"]] == ["length", "exact_dedup", "near_dedup"]  # no answer check
    assert filtered["rehearsal"]["answer_check"].startswith("skipped")
    assert filtered["kept_samples"] > 0.9 * teacher["samples"]  # random answers are neither duplicates nor too long
    student = _json(run / "stages" / "student" / "summary.json")
    assert student["tokens"] == 2000 and student["token_kind"] == "trained_tokens"
    assert student["outputs"]["data"]["dataset"].startswith("rehearsal: the teacher's rehearsed generations")
    result = run_cli("verify", str(rehearsed["bundle"]), "--trusted-key", str(rehearsed["pub"]), "--json")
    assert result.returncode == 0, result.output
    check = next(r for r in json.loads(result.stdout)["results"] if r["name"] == "rehearsal")
    assert check["status"] == "WARN" and "shape rehearsal" in check["reason"]


def test_the_leaderboard_refuses_a_rehearsed_sft_bundle(rehearsed):
    from distill_kit.bundle.verify import verify_bundle
    from distill_kit.leaderboard.submissions import _verdict

    report = verify_bundle(rehearsed["bundle"], [rehearsed["pub"]])
    refused = _verdict({"report": report.to_dict()})
    assert refused is not None and refused.status == 422


def test_answers_are_as_long_as_their_draws_not_max_new_tokens(rehearsed):
    from distill_kit.manifest import load_manifest
    from distill_kit.rehearsal.generation import rehearsal_prompts
    from distill_kit.rehearsal.shapes import tokenizer_shape
    from distill_kit.rehearsal.substitute import train_lengths

    _, records = read_generations(rehearsed["run"] / "stages" / "teacher" / "generations")
    document = load_manifest("smoke-sft", ["rehearsal.enabled=true"]).document
    vocab = tokenizer_shape(document["models"]["tokenizer"], "smoke-sft")
    drawn = rehearsal_prompts(train_lengths(document, 64), vocab.vocab_size, 64, MAX_NEW_TOKENS, 1500,
                              document["seed"], (vocab.pad_token_id, vocab.eos_token_id))
    assert [r.completion for r in records][:3] != [""] * 3
    assert [r.prompt_tokens for r in records] == [len(p.ids) for p in drawn]  # one sample per prompt (greedy)
    assert [r.generated_tokens for r in records] == [p.answer_tokens for p in drawn]
    lengths = np.array([r.generated_tokens for r in records])
    assert lengths.max() < MAX_NEW_TOKENS and len(set(lengths.tolist())) > 3  # random weights left alone: all 16
    assert all(r.finish_reason == "stop" and len(r.completion_ids) == r.generated_tokens - 1 for r in records)


def test_the_same_seed_gives_the_same_prompts_and_another_seed_others():
    from distill_kit.rehearsal.generation import rehearsal_prompts
    from distill_kit.rehearsal.shapes import LengthDistribution

    lengths = LengthDistribution(512, 1.0, None, 0.6, 16, 1000, "test")
    first = rehearsal_prompts(lengths, 100_352, 1024, 1024, 20_000, seed=7, special_ids=(100257, 100277))
    assert first == rehearsal_prompts(lengths, 100_352, 1024, 1024, 20_000, seed=7, special_ids=(100257, 100277))
    assert first != rehearsal_prompts(lengths, 100_352, 1024, 1024, 20_000, seed=8, special_ids=(100257, 100277))
    assert sum(len(p.ids) for p in first) == 20_000
    assert not any(t in (100257, 100277) for p in first for t in p.ids)
    cut = [p for p in rehearsal_prompts(lengths, 100_352, 1024, 256, 20_000, seed=7) if not p.finished]
    assert cut and all(p.answer_tokens == 256 for p in cut)  # longer than max_new_tokens: cut, left unfinished


def test_a_rehearsal_killed_after_the_teacher_resumes_to_the_same_generations(rehearsed, tmp_path):
    run_dir = tmp_path / "run"
    teacher = run_dir / "stages" / "teacher" / "summary.json"
    kill_when(spawn_cli("run", "smoke-sft", "--run-dir", str(run_dir), *RUN), teacher.exists)
    assert not (run_dir / "summary.json").exists()
    resumed = run_cli("run", "smoke-sft", "--run-dir", str(run_dir), "--resume", *RUN)
    assert resumed.returncode == 0, resumed.output
    summary = _json(run_dir / "summary.json")
    assert summary["rehearsal"] is True and [s["status"] for s in summary["stages"]] == ["finished"] * 5
    reference = _json(rehearsed["run"] / "stages" / "teacher" / "summary.json")["outputs"]
    assert [a["status"] for a in _json(teacher)["attempts"]] == ["finished"]  # not generated again
    outputs = _json(teacher)["outputs"]
    assert outputs["prompts_sha256"] == reference["prompts_sha256"]
    assert outputs["generations"]["shard_sha256"] == reference["generations"]["shard_sha256"]  # greedy: bit for bit


def test_estimate_times_the_generation_in_batches_and_scales_it_to_the_full_run(tmp_path):
    from distill_kit.manifest import load_manifest
    from distill_kit.runner.estimate import GENERATION_CALIBRATION_BATCHES, full_tokens

    out = tmp_path / "estimate.json"
    result = run_cli("estimate", "smoke-sft", "--json", str(out), "--run-dir", str(tmp_path / "cal"), "--set",
                     "teacher.generation.batch_size=25", "--set", "rehearsal.eval_tokens=256")
    assert result.returncode == 0, result.output
    report = _json(out)
    teacher = next(s for s in report["stages"] if s["stage"] == "teacher")
    expected = full_tokens(load_manifest("smoke-sft", []).document)["teacher_generation"]
    assert teacher["tokens"] == expected and expected > 20_000  # 4,000 rows x their mean answer
    assert "tokens/s" in teacher["basis"] and teacher["basis"].startswith("fixed")  # steady windows, scaled
    calibration = next(c for c in report["calibration"] if c["stage"] == "teacher")
    # 4 batches: the first is warm-up (not pipelined: no drain mark to drop), so 3 one-batch windows
    assert calibration["token_kind"] == "generated_tokens" and len(calibration["windows"]) == 3
    _, records = read_generations(tmp_path / "cal" / "stages" / "teacher" / "generations")
    batches = [sum(r.generated_tokens for r in records[i : i + 25]) for i in range(0, len(records), 25)]
    assert [w["tokens"] for w in calibration["windows"]] == batches[1:4]  # each window: one batch's generated tokens
    prompts = _json(tmp_path / "cal" / "stages" / "teacher" / "summary.json")["outputs"]["samples"]
    assert prompts == GENERATION_CALIBRATION_BATCHES * 25  # exactly 4 batches of 25 prompts
    student = next(s for s in report["stages"] if s["stage"] == "student")
    assert student["tokens"] == 1_000_000  # smoke-sft's student.token_budget


def test_a_hub_sft_rehearsal_plans_the_generation_stages_memory(tmp_path):
    result = run_cli("run", "sft_32b_1b", "--run-dir", str(tmp_path / "r"), "--rehearse", "--dry-run")
    assert_no_traceback(result)
    assert "not implemented" not in result.output and "not in the local cache" not in result.output
    teacher_row = next(line for line in result.output.splitlines() if "KV cache" in line)
    assert "teacher" in teacher_row and "weights 60.0" in teacher_row


def test_the_generation_plan_grows_with_the_batch_and_the_sequence_length():
    from distill_kit.manifest import load_manifest
    from distill_kit.rehearsal.memory import GIB, plan_generation

    base = plan_generation(load_manifest("sft_32b_1b", []).document)
    wider = plan_generation(load_manifest("sft_32b_1b", ["teacher.generation.batch_size=128"]).document)
    longer = plan_generation(load_manifest("sft_32b_1b", ["teacher.max_seq_len=4096"]).document)
    # OLMo-2 32B: 64 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 256 KiB per token; 64 sequences (base.yaml's
    # teacher.generation.batch_size) of up to 1,024 + 1,023 positions (the longest prompt, then the largest answer
    # budget of 1,023 a one-token prompt leaves) = 32 GiB
    assert base.parts["KV cache"] / GIB == pytest.approx(64 * 2047 * 256 / 2**20)
    assert wider.parts["KV cache"] == 2 * base.parts["KV cache"]
    assert longer.parts["KV cache"] == base.parts["KV cache"] * (4096 + 1024) / 2047  # max_new_tokens stays 1,024


def test_a_generation_batch_too_large_for_the_gpu_is_halved_until_it_fits():
    """base.yaml's batch of 64 fits an H200, not an 80 GB GPU: the advice is the largest halving that fits."""
    from distill_kit.manifest import load_manifest
    from distill_kit.rehearsal.memory import plan_run

    document = load_manifest("sft_32b_1b", []).document
    on_h100 = {p.stage: p for p in plan_run(document, 79.0)}["teacher"]
    assert on_h100.fits is False and on_h100.advice[0].startswith("teacher.generation.batch_size: 16 (")
    assert {p.stage: p for p in plan_run(document, 139.0)}["teacher"].fits is True
