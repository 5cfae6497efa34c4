"""Deterministic splits of a stage's work across ranks: pure functions of the data and the world size.

Teacher caching: the cache's shard boundaries are planned up front with the writer's own rule (a shard closes
once it holds ``shard_tokens`` tokens), so whichever rank writes shard ``n`` writes the bytes a one-process run
writes for it. Each rank takes a contiguous block of shards and runs the teacher on the batches that cover them.
Batches are formed inside fixed windows of the data (``length_grouped_batches``), the same whatever the rank or
the resume point (same padding, same numerics), so a window that straddles two ranks' blocks is run by both (at
most one window per rank boundary is computed twice).

Student training: an optimizer step takes ``grad_accum x world`` micro-batches of the one-process plan; rank ``r``
takes every ``world``-th one starting at ``r``. The global batch is therefore per-rank batch x world x grad_accum.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class PlannedShard:
    number: int
    first_sequence: int
    end_sequence: int  # exclusive


def plan_cache_shards(lengths: Sequence[int], shard_tokens: int) -> list[PlannedShard]:
    """The shards a one-process cache writer cuts from sequences of these lengths, in order."""
    shards: list[PlannedShard] = []
    start, pending = 0, 0
    for position, length in enumerate(lengths):
        pending += int(length)
        if pending >= shard_tokens:
            shards.append(PlannedShard(len(shards), start, position + 1))
            start, pending = position + 1, 0
    if start < len(lengths):
        shards.append(PlannedShard(len(shards), start, len(lengths)))
    return shards


def check_tiling(spans: Sequence[tuple[str, int, int]], total: int, what: str, unit: str) -> None:
    """Ranks' shards, as ``(file, first item, items)`` in order, must tile items ``[0, total)`` exactly (the merge of
    a spread stage's parts); otherwise a RuntimeError saying where they do not."""
    expected = 0
    for file, first, count in spans:
        if first != expected:
            raise RuntimeError(f"{what} shard {file} starts at {unit} {first}, expected {expected}: the ranks' parts "
                               f"do not tile the {unit}s")
        expected += count
    if expected != total:
        raise RuntimeError(f"the ranks' {what} shards hold {expected} {unit}s of {total}")


def block_of(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s contiguous block of ``items`` (the first ``len % world`` ranks take one more)."""
    base, extra = divmod(len(items), world)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (1 if rank < extra else 0)])


WINDOW_BATCHES = 32  # a window of the data holds this many batches' worth of sequences (batch_size each)


def length_grouped_batches(lengths: Sequence[int], first_sequence: int, end_sequence: int, batch_size: int,
                           max_len: int) -> Iterator[list[int]]:
    """Batches (sequence positions) covering sequences ``[first, end)``, padded to no more than
    ``batch_size x max_len`` tokens each: the data is cut into fixed windows of ``batch_size x WINDOW_BATCHES``
    sequences (from position 0, so a resumed or spread stage forms exactly the batches of one uninterrupted run),
    each window's sequences sorted by length, longest first, and taken greedily, as many as fit the budget at the
    first one's length. Fixed batches of ``batch_size`` in data order padded tulu-3-like lengths to about 60% real
    tokens (a 32B teacher at 4,822 real tokens/s against 8,206 for full batches, benchmarks/rehearsal.py); sorted
    windows keep the padding to the length differences of neighbours, and short sequences share a batch instead
    of leaving it mostly empty. The budget is the fixed batches' own worst case, so peak memory is unchanged."""
    if end_sequence <= first_sequence:
        return
    window = batch_size * WINDOW_BATCHES
    budget = batch_size * max_len
    for w0 in range(first_sequence // window * window, end_sequence, window):
        w1 = min(w0 + window, len(lengths))
        order = sorted(range(w0, w1), key=lambda i: -int(lengths[i]))  # stable: ties keep data order
        start = 0
        while start < len(order):
            count = max(1, budget // max(1, int(lengths[order[start]])))
            yield order[start : start + count]
            start += count


def strided(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s share of one optimizer step's micro-batches."""
    return list(items[rank::world])
