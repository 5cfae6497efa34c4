"""The full size of each benchmark, as data: what a "full evaluation" must cover (the verifier derives ``full`` from
these, never from the run's own flag).

Sizes are of the pinned datasets' evaluation splits (distill_kit/evaluation/data.py pins the revisions), with
their sources; the tiny task is the kit's own benchmark, its size read from the kit's asset definition.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class BenchmarkSize:
    task: str
    n: int  # per-sample records a full evaluation holds
    unit: str
    source: str


FULL_SIZES: dict[str, BenchmarkSize] = {
    "gsm8k": BenchmarkSize("gsm8k", 1319, "test questions",
                           "openai/gsm8k main/test (Cobbe et al. 2021, arXiv 2110.14168; hub dataset card)"),
    "mmlu": BenchmarkSize("mmlu", 14042, "test questions over 57 subjects",
                          "cais/mmlu all/test (Hendrycks et al. 2021, arXiv 2009.03300; hub dataset card)"),
    "ifeval": BenchmarkSize("ifeval", 541, "prompts",
                            "google/IFEval train split, the whole benchmark (Zhou et al. 2023, arXiv 2311.07911)"),
    "alpaca_eval": BenchmarkSize("alpaca_eval", 805, "instructions",
                                 "tatsu-lab/alpaca_eval alpaca_eval_gpt4_baseline.json (AlpacaEval 2 leaderboard)"),
    "mt_bench_101": BenchmarkSize("mt_bench_101", 1388, "dialogues (4,208 judged turns) in 13 tasks",
                                  "mtbench101/mt-bench-101 data/subjective/mtbench101.jsonl (Bai et al. 2024, "
                                  "arXiv 2402.14762)"),
}


@cache
def tiny_task_size() -> BenchmarkSize:
    """The kit's tiny task: every row of its eval split (distill_kit/assets/tiny/task/eval.jsonl)."""
    from distill_kit.assets.task import TINY_DIR, load_rows

    path = TINY_DIR / "task" / "eval.jsonl"
    return BenchmarkSize("tiny_task", len(load_rows(path)), "rows", f"the kit's asset {path.name} (assets/task.py)")


def full_size(task: str) -> BenchmarkSize | None:
    if task == "tiny_task":
        return tiny_task_size()
    return FULL_SIZES.get(task)


@cache
def fixture_digests() -> frozenset[str]:
    """sha256 of every file of the kit's evaluation fixtures: data with one of these digests is never a full
    benchmark."""
    from distill_kit.evaluation.data import FIXTURES_DIR

    return frozenset(hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(FIXTURES_DIR).rglob("*")
                     if p.is_file())


@cache
def tiny_task_rows() -> frozenset[tuple[str, str]]:
    """(prompt, answer) of every row of the tiny task's eval split: the records of a full evaluation cover these."""
    from distill_kit.assets.task import TINY_DIR, load_rows

    return frozenset((r.prompt, r.answer) for r in load_rows(TINY_DIR / "task" / "eval.jsonl"))
