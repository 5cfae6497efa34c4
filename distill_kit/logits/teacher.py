"""The teacher's side of the cache: forward a batch, take the top-k log-probs of every real prediction row and
encode them on the teacher's device, so only the compact rows cross to the host."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distill_kit.logits.cache import CacheIndex, EncodedSequence


def pad_batch(token_lists: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    lengths = [len(t) for t in token_lists]
    ids = torch.full((len(token_lists), max(lengths)), pad_id, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        ids[i, : lengths[i]] = torch.from_numpy(np.asarray(tokens))
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask, lengths


@torch.no_grad()
def teacher_topk(model: Any, ids: torch.Tensor, mask: torch.Tensor, index: CacheIndex
                 ) -> tuple[dict[str, np.ndarray], float]:
    """Encoded top-k rows for every real next-token prediction of the batch (sequences in order)."""
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
    rows = mask[:, 1:].bool().to(device)
    selected = logits[rows]  # [P, V]
    # top-k of raw logits has the order of the log-probs; normalise with one logsumexp pass instead of
    # materialising a float32 log_softmax of [P, V]
    top_logits, indices = selected.topk(index.top_k, dim=-1)
    lse = torch.logsumexp(selected.float() / index.temperature, dim=-1, keepdim=True)
    return index.encode_rows(indices, top_logits.float() / index.temperature - lse)


def split_sequences(arrays: dict[str, np.ndarray], tokens: list[np.ndarray], loss_masks: list[np.ndarray]
                    ) -> list[EncodedSequence]:
    out, start = [], 0
    for seq_tokens, seq_mask in zip(tokens, loss_masks, strict=True):
        count = len(seq_tokens) - 1
        out.append(EncodedSequence(seq_tokens, seq_mask, {k: v[start : start + count] for k, v in arrays.items()}))
        start += count
    return out
