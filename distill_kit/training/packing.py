"""Packing: several short training sequences in one row of ``max_seq_len`` tokens, without cross-attention.

Greedy and order-preserving: sequences are appended to the current row until the next one does not fit. Each row's
position ids restart at 0 at every sequence; the trainer passes them to the model instead of a padding mask, and
transformers builds a block-diagonal causal mask from them, so no token attends to another sequence. The loss
mask is carried over unchanged (a sequence's first token is never a target), so packing changes the number of
rows and the padding, never which tokens are trained on.
"""

from __future__ import annotations

import numpy as np

from distill_kit.training.data import Example


def pack_examples(examples: list[Example], max_seq_len: int) -> list[Example]:
    packed: list[Example] = []
    current: list[Example] = []
    length = 0
    for example in examples:
        if current and length + len(example.tokens) > max_seq_len:
            packed.append(_join(current))
            current, length = [], 0
        current.append(example)
        length += len(example.tokens)
    if current:
        packed.append(_join(current))
    return packed


def _join(parts: list[Example]) -> Example:
    return Example(tokens=np.concatenate([p.tokens for p in parts]),
                   loss_mask=np.concatenate([p.loss_mask for p in parts]),
                   position_ids=np.concatenate([np.arange(len(p.tokens)) for p in parts]))
