"""Preference pairs in the Tulu 3 preference-mixture shape (allenai/llama-3.1-tulu-3-8b-preference-mixture):
``id`` (str), ``prompt`` (str), ``chosen`` and ``rejected`` (each a list of ``{"role", "content"}`` messages: the
same conversation ending with a different assistant turn), ``source`` (str).

For SFT the ``chosen`` conversation is the training target. A pair whose ``chosen`` is malformed, or whose two
sides do not share their prompt turns, is dropped; ``rejected`` must be a well-formed conversation too (a pair is
one record). The rejected response is kept as the conversation's reference for inspection, never trained on.
"""

from __future__ import annotations

from typing import Any

from distill_kit.training.preprocess.base import Conversation, Dropped, clean_messages


def parse(row: dict[str, Any], index: int) -> Conversation | Dropped:
    chosen = clean_messages(row.get("chosen"))
    if isinstance(chosen, str):
        return Dropped(index, f"chosen_{chosen}")
    rejected = clean_messages(row.get("rejected"))
    if isinstance(rejected, str):
        return Dropped(index, f"rejected_{rejected}")
    if chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return Dropped(index, "chosen_rejected_prompt_mismatch")
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        users = [m["content"] for m in chosen if m["role"] == "user"]
        if prompt.strip() not in (u.strip() for u in users):
            return Dropped(index, "prompt_not_in_conversation")
    ident = row.get("id")
    return Conversation(chosen, index, str(ident) if ident is not None else None)
