"""A ``Progress`` that also timestamps every item a stage's loop yields (teacher batches, training steps), so the
steady state of a stage can be told from its warm-up (estimate, benchmarks). It forwards to another progress."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from distill_kit.stages.base import Progress, SilentProgress

T = TypeVar("T")


def item_tokens(item: Any) -> int | None:
    """Tokens of a teacher item: ``(sequences, error)`` of KD caching (forward tokens), a generation batch (its
    ``generated_tokens``); None for items that do not carry them (training steps)."""
    generated = getattr(item, "generated_tokens", None)
    if isinstance(generated, int):
        return generated
    if isinstance(item, tuple) and item and isinstance(item[0], list):
        return int(sum(len(s.tokens) for s in item[0] if hasattr(s, "tokens")))
    return None


@dataclass
class Loop:
    description: str
    started: float
    marks: list[tuple[float, int | None]] = field(default_factory=list)  # (time the item was done, its tokens)


class TimingProgress:
    def __init__(self, inner: Progress | None = None):
        self.inner = inner or SilentProgress()
        self.loops: list[Loop] = []

    def track(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        loop = Loop(description, time.time())
        self.loops.append(loop)
        for item in self.inner.track(items, total, description):
            yield item  # the caller's work on this item happens here
            loop.marks.append((time.time(), item_tokens(item)))

    def log(self, message: str) -> None:
        self.inner.log(message)

    def to_list(self) -> list[dict[str, Any]]:
        return [{"description": loop.description, "started": loop.started, "marks": loop.marks} for loop in self.loops]

    def restore(self, loops: list[dict[str, Any]]) -> None:
        """Loops of an earlier process (a run resumed in a second call), before this one's."""
        self.loops[:0] = [Loop(d["description"], d["started"], [(t, n) for t, n in d["marks"]]) for d in loops]

    def loop(self, prefix: str) -> Loop | None:
        """The last loop whose description starts with ``prefix``."""
        return next((loop for loop in reversed(self.loops) if loop.description.startswith(prefix)), None)
