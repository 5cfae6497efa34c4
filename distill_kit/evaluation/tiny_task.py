"""The tiny task's exact-match evaluation (greedy decoding), for the smoke manifests."""

from __future__ import annotations

from pathlib import Path

from distill_kit.assets.task import TINY_DIR, exact_match_accuracy, load_rows
from distill_kit.evaluation.registry import EvalSettings, TaskScore
from distill_kit.training.models import load_model, load_tokenizer
from distill_kit.training.threads import limit_cpu_threads


def evaluate(model_dir: Path, tokenizer_dir: Path, settings: EvalSettings) -> TaskScore:
    data_dir = settings.data_dir or (TINY_DIR / "task")
    rows = load_rows(data_dir / "eval.jsonl")
    full = settings.limit is None or settings.limit >= len(rows)
    rows = rows[: settings.limit] if settings.limit else rows
    tokenizer = load_tokenizer(tokenizer_dir)
    model = load_model(model_dir, settings.device)
    limit_cpu_threads(settings.device, model)
    kwargs = {"batch_size": settings.batch_size}
    if settings.max_new_tokens:
        kwargs["max_new_tokens"] = settings.max_new_tokens
    result = exact_match_accuracy(model, tokenizer, rows, **kwargs)
    prompt_tokens = sum(len(tokenizer(r.prompt)["input_ids"]) for r in rows)
    generated = sum(len(tokenizer(s["output"], add_special_tokens=False)["input_ids"]) + 1 for s in result.samples)
    return TaskScore(task="tiny_task", metric="exact_match", score=result.accuracy, n=result.n,
                     tokens=prompt_tokens + generated, samples=result.samples, full=full,
                     details={"decoding": "greedy", "normalisation": "strip"})
