"""Evaluation adapters: each task name maps to one adapter that scores a local checkpoint.

    score = run_task("tiny_task", model_dir, tokenizer_dir, settings)  # -> TaskScore
"""

from distill_kit.evaluation.registry import KNOWN_TASKS, TaskScore, run_task

__all__ = ["KNOWN_TASKS", "TaskScore", "run_task"]
