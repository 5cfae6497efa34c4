"""The teacher's side of the cache: forward a batch, take the top-k log-probs of every real prediction row and
encode them on the teacher's device, so only the compact rows cross to the host."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from distill_kit._transfers import HostCopies, to_device
from distill_kit.logits.cache import CacheIndex, EncodedSequence


def pad_batch(token_lists: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    lengths = [len(t) for t in token_lists]
    ids = torch.full((len(token_lists), max(lengths)), pad_id, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        ids[i, : lengths[i]] = torch.from_numpy(np.asarray(tokens))
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask, lengths


def _logsumexp(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.logsumexp(x.float() / temperature, dim=-1)


_compiled_logsumexp = None


def logsumexp_rows(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 logsumexp of bf16 rows; on GPUs compiled into one fused pass (no float32 copy of [P, V]). Only the
    number of rows varies between batches: a kernel specialised to the vocabulary width ran in 1.9 ms against
    3.6 ms for one generic in both (H100, [16k, 100k], benchmarks/profile_gpu.py)."""
    global _compiled_logsumexp
    if x.device.type != "cuda":
        return _logsumexp(x, temperature)
    if _compiled_logsumexp is None:
        _compiled_logsumexp = torch.compile(_logsumexp)
    torch._dynamo.mark_dynamic(x, 0)
    return _compiled_logsumexp(x, temperature)


def topk_rows(x: torch.Tensor, k: int, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row [n, V], sorted descending, exact. The row is cut into blocks of ``block`` columns; only
    the k blocks with the largest maxima can hold top-k entries (those k maxima are k entries at least as large as
    the k-th block maximum, which bounds every entry of every other block), so the selection runs over k * block
    candidates instead of V: at k=100 over 100,352 columns, a quarter of the row. The tail of V beyond the last
    whole block is always a candidate. Ties at the k-th value may pick other indices than torch.topk would;
    the values are the same."""
    n, width = x.shape
    blocks = width // block
    if blocks <= k or k * block >= width:  # prefiltering would not shrink the row
        values, indices = x.topk(k, dim=-1, sorted=False)
    else:
        main = x[:, : blocks * block].view(n, blocks, block)
        chosen = main.amax(-1).topk(k, dim=-1, sorted=False).indices  # [n, k] block numbers
        candidates = main.gather(1, chosen[..., None].expand(n, k, block)).reshape(n, k * block)
        tail = x[:, blocks * block :]
        if tail.shape[1]:
            candidates = torch.cat([candidates, tail], dim=1)
        values, pick = candidates.topk(k, dim=-1, sorted=False)
        in_block = chosen.gather(1, (pick // block).clamp(max=k - 1)) * block + pick % block
        indices = torch.where(pick < k * block, in_block, blocks * block + pick - k * block)
    values, order = values.sort(dim=-1, descending=True)  # select, then sort only the k survivors
    return values, indices.gather(1, order)


@torch.no_grad()
def teacher_topk(model: Any, ids: torch.Tensor, mask: torch.Tensor, index: CacheIndex
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Encoded top-k rows (on the teacher's device, queued, not waited for) for every real next-token prediction
    of the right-padded batch, sequences in order; and the largest log-prob error of the encoding."""
    device = next(model.parameters()).device
    # Right padding under causal attention: no real position sees a pad, so the padding mask is left out (as in
    # training, data.py) and the rows of pads are dropped below.
    logits = model(input_ids=to_device(ids, device), use_cache=False).logits
    flat = logits.view(-1, logits.shape[-1])  # [B*L, V], no copy (slicing off the last position would copy)
    # top-k of the raw logits has the order of the log-probs; normalise with one logsumexp pass. Rows that
    # predict nothing (padding, each sequence's last position) are computed and dropped afterwards: cheaper than
    # copying the real rows out of [B*L, V] first.
    top_logits, indices = topk_rows(flat, index.top_k)
    lse = logsumexp_rows(flat, index.temperature)
    predicts = torch.zeros_like(mask, dtype=torch.bool)
    predicts[:, :-1] = mask[:, 1:].bool()
    rows = to_device(predicts.view(-1).nonzero().squeeze(1), device)  # found on the host: no sync on the GPU
    logprobs = top_logits.index_select(0, rows).float() / index.temperature - lse.index_select(0, rows)[:, None]
    return index.encode_on_device(indices.index_select(0, rows), logprobs)


def cache_batches(model: Any, batches: Iterable[list[tuple[np.ndarray, np.ndarray]]], index: CacheIndex,
                  pad_id: int) -> Iterator[tuple[list[EncodedSequence], float]]:
    """The teacher's loop over batches of (tokens, loss mask): yields each batch's encoded sequences and error.
    Batch i is yielded once batch i+1 is queued on the GPU, so the host's work on a batch (its copy, split, hand
    to the writer) overlaps the GPU's on the next one."""
    in_flight = None
    for batch in batches:
        tokens = [t for t, _ in batch]
        ids, mask, _ = pad_batch(tokens, pad_id)
        arrays, error = teacher_topk(model, ids, mask, index)
        queued = (HostCopies({**arrays, "error": error}), tokens, [m for _, m in batch])
        if in_flight is not None:
            yield _landed(*in_flight)
        in_flight = queued
    if in_flight is not None:
        yield _landed(*in_flight)


def _landed(copies: HostCopies, tokens: list[np.ndarray], loss_masks: list[np.ndarray]
            ) -> tuple[list[EncodedSequence], float]:
    arrays = {name: t.numpy() for name, t in copies.wait().items()}
    error = float(arrays.pop("error"))
    return split_sequences(arrays, tokens, loss_masks), error


def split_sequences(arrays: dict[str, np.ndarray], tokens: list[np.ndarray], loss_masks: list[np.ndarray]
                    ) -> list[EncodedSequence]:
    out, start = [], 0
    for seq_tokens, seq_mask in zip(tokens, loss_masks, strict=True):
        count = len(seq_tokens) - 1
        out.append(EncodedSequence(seq_tokens, seq_mask, {k: v[start : start + count] for k, v in arrays.items()}))
        start += count
    return out
