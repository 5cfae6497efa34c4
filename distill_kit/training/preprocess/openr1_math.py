"""open-r1/OpenR1-Math-220k: a NuminaMath problem (``problem``), its reference ``solution`` and final ``answer``
(str), and two to four DeepSeek-R1 traces (``generations``, list of str) each with ``correctness_math_verify`` /
``correctness_llama`` (lists of bool), ``is_reasoning_complete`` and ``finish_reasons``; ``messages`` holds one
verified trace as a user/assistant pair; also ``uuid``, ``source``, ``problem_type``, ``question_type``.

Trained on ``messages`` where well formed, else on the first generation that Math-Verify marked correct and whose
reasoning is complete. ``answer`` is kept as the reference for answer checking of teacher generations.
"""

from __future__ import annotations

from typing import Any

from distill_kit.training.preprocess.base import Conversation, Dropped, clean_messages


def _as_list(value: Any) -> list:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value if isinstance(value, list) else []


def _verified_generation(row: dict[str, Any]) -> str | None:
    generations = _as_list(row.get("generations"))
    correct = _as_list(row.get("correctness_math_verify"))
    complete = _as_list(row.get("is_reasoning_complete"))
    for i, text in enumerate(generations):
        ok = i < len(correct) and correct[i] is True
        done = i >= len(complete) or complete[i] is not False
        if ok and done and isinstance(text, str) and text.strip():
            return text
    return None


def parse(row: dict[str, Any], index: int) -> Conversation | Dropped:
    problem, answer = row.get("problem"), row.get("answer")
    if not isinstance(problem, str) or not problem.strip():
        return Dropped(index, "missing_problem")
    reference = answer.strip() if isinstance(answer, str) and answer.strip() else None
    messages = clean_messages(row.get("messages"))
    if isinstance(messages, str):
        generation = _verified_generation(row)
        if generation is None:
            return Dropped(index, "no_verified_generation")
        messages = [{"role": "user", "content": problem}, {"role": "assistant", "content": generation}]
    ident = row.get("uuid")
    return Conversation(messages, index, str(ident) if ident is not None else None, reference)
