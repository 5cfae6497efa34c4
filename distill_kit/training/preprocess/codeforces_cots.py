"""open-r1/codeforces-cots: a problem statement (``prompt``, str) and DeepSeek-R1's reasoning and solution
(``generation``, str) with its ``finish_reason`` (``"stop"``, or ``"length"`` where the trace was cut off), and the
same pair as chat ``messages``; plus the problem's metadata (``id``, ``contest_id``, ``title``, ``description``,
``examples``, ``editorial``, ``api_metadata``...). The subsets (``solutions``, ``solutions_py``,
``solutions_w_editorials``, ...) are folders of the repository: name one with ``data.train.subset``.

``messages`` is used where it is well formed, else ``prompt`` + ``generation``; a trace cut off by the length
limit is dropped (``truncated_generation``): its code is incomplete.
"""

from __future__ import annotations

from typing import Any

from distill_kit.training.preprocess.base import Conversation, Dropped, clean_messages


def parse(row: dict[str, Any], index: int) -> Conversation | Dropped:
    finish = row.get("finish_reason")
    if finish is not None and finish != "stop":
        return Dropped(index, "truncated_generation")
    messages = clean_messages(row.get("messages"))
    if isinstance(messages, str):
        prompt, generation = row.get("prompt"), row.get("generation")
        if not isinstance(prompt, str) or not prompt.strip():
            return Dropped(index, "missing_prompt")
        if not isinstance(generation, str) or not generation.strip():
            return Dropped(index, "missing_generation")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": generation}]
    ident = row.get("id")
    return Conversation(messages, index, str(ident) if ident is not None else None)
