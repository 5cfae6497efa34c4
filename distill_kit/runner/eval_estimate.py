"""The evaluation stage of ``distill-kit estimate``: per (model, task) of ``eval.models`` x ``eval.tasks``, the
tokens a full evaluation prefills and generates (per-task figures: distill_kit/assets/eval_costs/eval-tasks.json),
at the prefill and decode rates the rehearsal measured for that model (docs/estimate.md, "Evaluation").

Prefill tokens = samples x forwards per sample x (prompt + shots x shot tokens); generated tokens = samples x
forwards per sample x mean generated tokens (the interval's high end: every answer runs to its cap). Judges are not
measured: they are listed as unmeasured, never counted as zero. A task without figures is listed as not estimated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from distill_kit.manifest.settings import Settings

FIGURES_PATH = Path(__file__).resolve().parent.parent / "assets" / "eval_costs" / "eval-tasks.json"
NOT_ESTIMATED = {"olmes": "its requests depend on eval.olmes_tasks and OLMES's own task suites, which the kit has "
                          "no per-task figures for"}


@cache
def task_figures() -> dict[str, dict[str, Any]]:
    """The per-task figures, the tiny task's counted from its own rows with its own tokenizer."""
    figures = dict(json.loads(FIGURES_PATH.read_text())["tasks"])
    figures["tiny_task"] = _tiny_task_figures()
    return figures


def _tiny_task_figures() -> dict[str, Any]:
    from distill_kit.assets.task import DEFAULT_MAX_NEW_TOKENS, PROMPT_SUFFIX, TINY_DIR, load_rows
    from distill_kit.training.models import load_tokenizer

    rows = load_rows(TINY_DIR / "task" / "eval.jsonl")
    tokenizer = load_tokenizer(TINY_DIR / "tokenizer")
    prompt = sum(len(tokenizer(r.prompt + PROMPT_SUFFIX)["input_ids"]) for r in rows) / len(rows)
    answer = sum(len(tokenizer(" " + r.answer, add_special_tokens=False)["input_ids"]) + 1 for r in rows) / len(rows)
    source = f"counted over the {len(rows)} rows of the kit's tiny-task eval split with its tokenizer"
    return {"kind": "generate_until", "num_fewshot": 0, "prompt_tokens": prompt, "prompt_tokens_source": source,
            "shot_tokens": 0, "forwards_per_sample": 1, "generated_tokens": min(answer, DEFAULT_MAX_NEW_TOKENS),
            "generated_tokens_source": f"{source} (answer + EOS, greedy)", "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
            "eval_max_new_tokens_applies": True, "limit_groups": 1, "judge": None}


@dataclass(frozen=True)
class Rates:
    """One model's measured rates in the rehearsal's eval stage (J/token None where no energy was read)."""

    prefill_tokens_per_s: float
    prefill_j_per_token: float | None
    decode_tokens_per_s: float
    decode_j_per_token: float | None


def _window_energy(windows: dict[str, dict[str, Any]], label: str) -> float | None:
    from distill_kit.runner.predictions import stage_energy_j

    window = windows.get(label)
    return stage_energy_j(window) if window and window.get("energy") else None


def measured_rates(outputs: dict[str, Any]) -> dict[str, Rates]:
    """Model -> its rates, from the rehearsal eval stage's forward and decode windows."""
    windows = {w.get("label"): w for w in outputs.get("windows", [])}
    rates = {}
    for record in outputs.get("models", []):
        decode = record.get("decode")
        if not decode or not record.get("tokens_per_s") or not decode.get("tokens_per_s"):
            continue
        forward_j, decode_j = _window_energy(windows, record["window"]), _window_energy(windows, decode["window"])
        rates[record["model"]] = Rates(record["tokens_per_s"], forward_j / record["tokens"] if forward_j else None,
                                       decode["tokens_per_s"], decode_j / decode["tokens"] if decode_j else None)
    return rates


@dataclass(frozen=True)
class TaskLoad:
    task: str
    samples: int
    prefill_tokens: float
    generated_tokens: float  # at the mean generated tokens
    generated_tokens_cap: float  # every answer at its cap
    judge: str | None


def task_load(task: str, settings: Settings) -> TaskLoad | str:
    """The task's tokens in a full evaluation (``eval.limit`` applied), or why it cannot be estimated."""
    from distill_kit.evaluation.benchmarks import full_size

    figures = task_figures().get(task)
    size = full_size(task)
    if figures is None or size is None:
        return NOT_ESTIMATED.get(task, "no per-task figures (distill_kit/assets/eval_costs/eval-tasks.json)")
    samples = size.n
    if settings.eval.limit:
        samples = min(samples, settings.eval.limit * int(figures["limit_groups"]))
    shots = settings.eval.num_fewshot.get(task, figures["num_fewshot"])
    requests = samples * float(figures["forwards_per_sample"])
    cap = float(figures["max_new_tokens"])
    if figures.get("eval_max_new_tokens_applies") and settings.eval.max_new_tokens:  # lm-eval tasks keep theirs
        cap = float(settings.eval.max_new_tokens)
    return TaskLoad(task, samples, requests * (figures["prompt_tokens"] + shots * figures["shot_tokens"]),
                    requests * min(float(figures["generated_tokens"]), cap), requests * cap, figures["judge"])


def _cost(load: TaskLoad, rates: Rates) -> dict[str, Any]:
    seconds = [load.prefill_tokens / rates.prefill_tokens_per_s + g / rates.decode_tokens_per_s
               for g in (load.generated_tokens, load.generated_tokens_cap)]
    energy = None
    if rates.prefill_j_per_token is not None and rates.decode_j_per_token is not None:
        energy = [load.prefill_tokens * rates.prefill_j_per_token + g * rates.decode_j_per_token
                  for g in (load.generated_tokens, load.generated_tokens_cap)]
    return {**asdict(load), "seconds": {"low": seconds[0], "mid": seconds[0], "high": seconds[1]},
            "energy_j": {"low": energy[0], "mid": energy[0], "high": energy[1]} if energy else None}


def eval_breakdown(document: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    """Per (model, task): samples, tokens, seconds and joules; the tasks not estimated and the unmeasured judges."""
    settings = Settings.of(document)
    rates = measured_rates(outputs)
    rows, not_estimated, unmeasured = [], [], []
    for task in settings.eval.tasks:
        load = task_load(task, settings)
        if isinstance(load, str):
            not_estimated.append({"task": task, "reason": load})
            continue
        if load.judge:
            unmeasured.append({"task": task, "what": f"{load.judge}: not measured, not counted"})
        for model in settings.eval.models:
            if model not in rates:
                not_estimated.append({"task": task, "model": model, "reason": "no decode window measured"})
                continue
            rows.append({"model": model, **_cost(load, rates[model])})
    return {"figures": "distill_kit/assets/eval_costs/eval-tasks.json", "fixture_data": settings.eval.data ==
            "fixtures", "rates": {m: asdict(r) for m, r in rates.items()}, "tasks": rows,
            "not_estimated": not_estimated, "unmeasured": unmeasured}


def _fixed(calibration: Any) -> tuple[float, float | None]:
    """Seconds and joules of the rehearsal's eval stage outside its forward and decode windows (model loading)."""
    records = [r for m in calibration.outputs.get("models", []) for r in (m, m.get("decode") or {})]
    seconds = max(0.0, calibration.wall_s - sum(r.get("seconds") or 0.0 for r in records))
    windows = {w.get("label"): w for w in calibration.outputs.get("windows", [])}
    energies = [_window_energy(windows, r.get("window", "")) for r in records]
    if calibration.energy_j is None or any(e is None for e in energies):
        return seconds, None
    return seconds, max(0.0, calibration.energy_j - sum(e or 0.0 for e in energies))


def _basis(breakdown: dict[str, Any], fixed_s: float) -> str:
    rows = breakdown["tasks"]
    prefill, generated = sum(r["prefill_tokens"] for r in rows), sum(r["generated_tokens"] for r in rows)
    parts = [f"per-task model: {len(rows)} (model, task) pairs, {prefill:,.0f} prefill tokens at the measured "
             f"prefill rates + {generated:,.0f} generated tokens at the measured decode rates (high: every answer "
             f"at its cap) + fixed {fixed_s:.1f} s"]
    if breakdown["not_estimated"]:
        parts.append("NOT estimated: " + "; ".join(f"{e['task']}" + (f" ({e['model']})" if "model" in e else "")
                                                   + f": {e['reason']}" for e in breakdown["not_estimated"]))
    if breakdown["unmeasured"]:
        parts.append("unmeasured: judges of " + ", ".join(e["task"] for e in breakdown["unmeasured"]))
    if breakdown["fixture_data"]:
        parts.append("eval.data is fixtures: the run scores a few rows; this is the pinned benchmarks' full size")
    return "; ".join(parts)


def predict_eval(calibration: Any, document: dict[str, Any]) -> Any:
    """The evaluation stage of the full run (a ``StagePrediction`` carrying the per-task breakdown)."""
    from distill_kit.runner.predictions import Interval, StagePrediction

    breakdown = eval_breakdown(document, calibration.outputs)
    fixed_s, fixed_j = _fixed(calibration)
    rows = breakdown["tasks"]
    seconds = Interval(*(fixed_s + sum(r["seconds"][k] for r in rows) for k in ("low", "mid", "high")))
    energy = None
    if fixed_j is not None and all(r["energy_j"] is not None for r in rows):
        energy = Interval(*(fixed_j + sum(r["energy_j"][k] for r in rows) for k in ("low", "mid", "high")))
    return StagePrediction(calibration.stage, calibration.kind, None, seconds, energy,
                           _basis(breakdown, fixed_s), breakdown)
