"""The task registry: which adapter scores which task name, and what every adapter is given and returns."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_kit.errors import DistillKitError

if TYPE_CHECKING:  # pragma: no cover
    from distill_kit.evaluation.judges import Judge

# task name -> "module:function" of its adapter (imported only when the task runs)
ADAPTERS = {
    "tiny_task": "distill_kit.evaluation.tiny_task:evaluate",
    "gsm8k": "distill_kit.evaluation.harness:evaluate_gsm8k",
    "mmlu": "distill_kit.evaluation.harness:evaluate_mmlu",
    "ifeval": "distill_kit.evaluation.harness:evaluate_ifeval",
    "alpaca_eval": "distill_kit.evaluation.alpaca_eval2:evaluate",
    "mt_bench_101": "distill_kit.evaluation.mt_bench_101:evaluate",
    "olmes": "distill_kit.evaluation.olmes:evaluate",
}
KNOWN_TASKS = sorted(ADAPTERS)
LM_EVAL_TASKS = ("gsm8k", "mmlu", "ifeval")
JUDGED_TASKS = ("alpaca_eval", "mt_bench_101")


class EvalError(DistillKitError):
    """An evaluation that cannot run as configured (missing tool, unreachable judge, bad data)."""


@dataclass
class TaskScore:
    task: str
    metric: str
    score: float
    n: int
    tokens: int  # prompt + generated tokens processed by the model under test
    samples: list[dict[str, Any]] = field(default_factory=list)
    full: bool = True  # False when a sample limit made it a subset
    details: dict[str, Any] = field(default_factory=dict)
    judge: dict[str, Any] | None = None  # judge identity, token counts, where its energy was (or was not) measured


@dataclass
class EvalSettings:
    device: str
    limit: int | None
    batch_size: int
    max_new_tokens: int | None
    data_dir: Path | None  # the task data of the manifest's eval dataset, where one is named (tiny_task)
    data_mode: str = "hub"  # hub: the pinned data `assets fetch` cached; fixtures: the kit's small fixtures
    dataset_overrides: dict[str, Any] = field(default_factory=dict)
    manifest_name: str = "MANIFEST"
    model_label: str = "student"  # teacher | student_initial | student
    out_dir: Path | None = None  # the eval stage's folder; adapters write under it
    lm_eval_tasks_dir: Path | None = None  # the generated task folder (see lm_eval_tasks)
    dtype: str = "auto"
    max_length: int | None = None  # lm-eval's model context (model_args max_length); None: the model's own
    judge: Judge | None = None
    olmes_tasks: list[str] = field(default_factory=list)
    mt_bench_101_prompts: str | None = None  # a JSON file with other judge prompt wording
    # nested energy window (the stage's ctx.measure): adapters wrap their judge phase in one
    measure: Callable[[str], AbstractContextManager[dict[str, Any]]] = lambda label: nullcontext({"label": label})
    windows: list[dict[str, Any]] = field(default_factory=list)  # windows the adapters opened, for the summary

    @property
    def lm_eval_dtype(self) -> str:
        if self.dtype != "auto":
            return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(self.dtype, self.dtype)
        return "bfloat16" if self.device == "cuda" else "float32"


def run_task(task: str, model_dir: Path, tokenizer_dir: Path, settings: EvalSettings) -> TaskScore:
    if task not in ADAPTERS:
        raise EvalError(f"task '{task}' has no adapter in this version of the kit "
                        f"(available: {', '.join(sorted(ADAPTERS))})")
    module_name, _, function = ADAPTERS[task].partition(":")
    return getattr(importlib.import_module(module_name), function)(model_dir, tokenizer_dir, settings)
