"""allenai/tulu-3-sft-mixture (and any dataset in the same shape): one row = ``id`` (str), ``messages`` (a list of
``{"role", "content"}`` with roles system/user/assistant), ``source`` (str). Trained on every assistant turn."""

from __future__ import annotations

from typing import Any

from distill_kit.training.preprocess.base import Conversation, Dropped, clean_messages


def parse(row: dict[str, Any], index: int) -> Conversation | Dropped:
    messages = clean_messages(row.get("messages"))
    if isinstance(messages, str):
        return Dropped(index, messages)
    ident = row.get("id")
    return Conversation(messages, index, str(ident) if ident is not None else None)
