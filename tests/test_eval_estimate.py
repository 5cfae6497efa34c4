"""The evaluation cost model of ``distill-kit estimate`` (issue 17): per (model, task) tokens from the per-task
figures at the rehearsal's measured prefill and decode rates; ``eval.limit`` scales it; a task without figures
(olmes) and the judges are reported, never counted as zero. Synthetic calibrations: no rehearsal is run."""

from __future__ import annotations

import pytest

from distill_kit.manifest import load_manifest
from distill_kit.runner.estimate import StageCalibration, predict
from distill_kit.runner.eval_estimate import task_figures


def _window(label: str, joules: float) -> dict:
    return {"label": label, "duration_s": 1.0, "energy": {"cpu": {"energy_j": joules}, "gpu": {"energy_j": None}}}


def _calibration(models: tuple[str, ...]) -> StageCalibration:
    """An eval stage that prefilled 1,000 tokens/s at 0.5 J/token and decoded 100 tokens/s at 2 J/token per model,
    plus 2 s and 10 J of loading."""
    records, windows = [], []
    for name in models:
        records.append({"model": name, "tokens": 1000, "seconds": 1.0, "tokens_per_s": 1000.0,
                        "window": f"rehearsal-forward/{name}",
                        "decode": {"model": name, "tokens": 100, "seconds": 1.0, "tokens_per_s": 100.0,
                                   "window": f"rehearsal-decode/{name}"}})
        windows += [_window(f"rehearsal-forward/{name}", 500.0), _window(f"rehearsal-decode/{name}", 200.0)]
    wall, energy = 2.0 * len(models) + 2.0, 700.0 * len(models) + 10.0
    return StageCalibration("eval", "eval", "rehearsal_forward_tokens", 1000 * len(models), wall, energy,
                            outputs={"models": records, "windows": windows})


def _eval(tasks: list[str], limit: int | None = None, models: tuple[str, ...] = ("student",), **eval_settings) -> dict:
    document = load_manifest("eval_olmo2_1b").document
    document["eval"] = {**document["eval"], "tasks": tasks, "models": list(models), **eval_settings}
    if limit is not None:
        document["eval"]["limit"] = limit
    estimate = predict(document, [_calibration(models)], 1, "FRA", {})
    return estimate.stages[0].to_dict()


def test_the_eval_stage_is_the_tasks_tokens_at_the_measured_prefill_and_decode_rates():
    stage = _eval(["gsm8k", "mmlu"])
    gsm8k, mmlu = (next(r for r in stage["eval"]["tasks"] if r["task"] == t) for t in ("gsm8k", "mmlu"))
    figures = task_figures()["gsm8k"]
    assert gsm8k["samples"] == 1319
    assert gsm8k["prefill_tokens"] == pytest.approx(1319 * (figures["prompt_tokens"] + 5 * figures["shot_tokens"]))
    assert gsm8k["generated_tokens"] == pytest.approx(1319 * figures["generated_tokens"])
    assert gsm8k["generated_tokens_cap"] == pytest.approx(1319 * 256)
    assert gsm8k["seconds"]["mid"] == pytest.approx(gsm8k["prefill_tokens"] / 1000 + gsm8k["generated_tokens"] / 100)
    assert gsm8k["energy_j"]["mid"] == pytest.approx(gsm8k["prefill_tokens"] * 0.5 + gsm8k["generated_tokens"] * 2)
    assert gsm8k["seconds"]["high"] > gsm8k["seconds"]["mid"]  # every answer at its cap
    assert mmlu["samples"] == 14042 and mmlu["generated_tokens"] == 0  # loglikelihood: no generation
    total = 2.0 + gsm8k["seconds"]["mid"] + mmlu["seconds"]["mid"]  # + the stage's loading outside its windows
    assert stage["seconds"]["mid"] == pytest.approx(total)
    assert stage["energy_j"]["mid"] == pytest.approx(10.0 + gsm8k["energy_j"]["mid"] + mmlu["energy_j"]["mid"])
    assert stage["basis"].startswith("per-task model: 2 (model, task) pairs")


def test_eval_limit_scales_the_samples_per_limited_group():
    full, limited = _eval(["gsm8k", "mmlu"]), _eval(["gsm8k", "mmlu"], limit=10)
    samples = {r["task"]: r["samples"] for r in limited["eval"]["tasks"]}
    assert samples == {"gsm8k": 10, "mmlu": 570}  # lm-eval limits each of MMLU's 57 subjects
    assert limited["seconds"]["mid"] < full["seconds"]["mid"] / 20


def test_a_task_without_figures_is_reported_not_estimated_never_zero():
    stage = _eval(["olmes", "ifeval"])
    assert [e["task"] for e in stage["eval"]["not_estimated"]] == ["olmes"]
    assert "olmes_tasks" in stage["eval"]["not_estimated"][0]["reason"]
    assert "NOT estimated: olmes: its requests depend on eval.olmes_tasks" in stage["basis"]
    assert [r["task"] for r in stage["eval"]["tasks"]] == ["ifeval"]


def test_judges_are_listed_as_unmeasured_and_the_kit_cap_follows_eval_max_new_tokens():
    stage = _eval(["alpaca_eval", "mt_bench_101"])
    assert [e["task"] for e in stage["eval"]["unmeasured"]] == ["alpaca_eval", "mt_bench_101"]
    assert "unmeasured: judges of alpaca_eval, mt_bench_101" in stage["basis"]
    alpaca = next(r for r in stage["eval"]["tasks"] if r["task"] == "alpaca_eval")
    assert alpaca["generated_tokens_cap"] == pytest.approx(805 * 1024)
    capped = {r["task"]: r for r in _eval(["alpaca_eval", "gsm8k"], max_new_tokens=100)["eval"]["tasks"]}
    assert capped["alpaca_eval"]["generated_tokens_cap"] == pytest.approx(805 * 100)
    assert capped["alpaca_eval"]["generated_tokens"] == pytest.approx(805 * 100)  # the mean cut at the cap
    assert capped["gsm8k"]["generated_tokens_cap"] == pytest.approx(1319 * 256)  # lm-eval tasks keep their own
