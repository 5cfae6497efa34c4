"""The kit's tiny task (``distill_kit/assets/tiny/task/{train,eval}.jsonl``): ``{"prompt": str, "answer": str}``.
Rendered in the task's own text format (``TaskRenderer``), the one its exact-match eval uses; the answer is also
the reference for answer checking."""

from __future__ import annotations

from typing import Any

from distill_kit.training.preprocess.base import Conversation, Dropped


def parse(row: dict[str, Any], index: int) -> Conversation | Dropped:
    prompt, answer = row.get("prompt"), row.get("answer")
    if not isinstance(prompt, str) or not prompt.strip():
        return Dropped(index, "missing_prompt")
    if not isinstance(answer, str) or not answer.strip():
        return Dropped(index, "missing_answer")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return Conversation(messages, index, None, answer)
