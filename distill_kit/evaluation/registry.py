"""The task registry: which adapter scores which task name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# task name -> "module:function" of its adapter (imported only when the task runs)
ADAPTERS = {
    "tiny_task": "distill_kit.evaluation.tiny_task:evaluate",
}
# Names the manifests may use; adapters for the lm-eval, AlpacaEval, MT-Bench-101 and OLMES tasks come with
# the evaluation work (issue 6). Until then a run that asks for one fails at the eval stage with a clear message.
KNOWN_TASKS = sorted({*ADAPTERS, "gsm8k", "mmlu", "ifeval", "alpaca_eval", "mt_bench_101", "olmes"})


@dataclass
class TaskScore:
    task: str
    metric: str
    score: float
    n: int
    tokens: int  # prompt + generated tokens processed
    samples: list[dict[str, Any]] = field(default_factory=list)
    full: bool = True  # False when a sample limit made it a subset
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSettings:
    device: str
    limit: int | None
    batch_size: int
    max_new_tokens: int | None
    data_dir: Path | None  # the task data of the manifest's eval dataset, where one is named


def run_task(task: str, model_dir: Path, tokenizer_dir: Path, settings: EvalSettings) -> TaskScore:
    if task not in ADAPTERS:
        raise NotImplementedError(f"task '{task}' has no adapter in this version of the kit "
                                  f"(available: {', '.join(sorted(ADAPTERS))})")
    module_name, _, function = ADAPTERS[task].partition(":")
    return getattr(importlib.import_module(module_name), function)(model_dir, tokenizer_dir, settings)
