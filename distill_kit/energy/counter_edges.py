"""Reading an energy counter *at* a window edge, not at its last update before the edge.

The NVML energy counter advances in steps (about every 100 ms on an H100): read at time t it holds the energy up to
its last update t0 <= t, so a window's difference can be off by up to one update's energy at each edge (2.3% of a
5 s window on an H200, benchmarks/energy_coverage.py). At each edge the meter therefore keeps polling the counter
for a moment after its reading and records the first two updates it sees, (t1, C1) and (t2, C2); the counter at
t is then interpolated between the update before the edge, C0 at t0 = t1 - (t2 - t1) (one update period earlier),
and C1. What the meter records is the raw reading and the updates (``gpu_counter_after``), so ``verify`` computes
the same aligned value with ``aligned_mj``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

POLL_S = 0.002
SETTLE_S = 0.3  # quiet before an edge the kit controls (the prerun's): power steady over the step holding it
MAX_WAIT_S = 0.35  # a little over three 100 ms update periods: two updates are seen on any counter that steps

Update = list[float]  # [t, mj]


def watch_updates(read: Callable[[], Sequence[int | None]], at_edge: Sequence[int | None],
                  max_wait_s: float = MAX_WAIT_S, poll_s: float = POLL_S,
                  clock: Callable[[], float] | None = None) -> list[list[Update]]:
    """Poll ``read`` until every counter has stepped twice after its edge reading ``at_edge`` (or ``max_wait_s``
    passed); per counter the (time, value) of the first two steps seen (``clock``: ``time.time``, the clock of
    the edges' ``t``)."""
    clock = clock or time.time
    updates: list[list[Update]] = [[] for _ in at_edge]
    last = list(at_edge)
    deadline = clock() + max_wait_s
    while clock() < deadline and any(len(u) < 2 and v is not None for u, v in zip(updates, at_edge, strict=True)):
        time.sleep(poll_s)
        values, now = read(), clock()
        for i, value in enumerate(values):
            if value is not None and last[i] is not None and value != last[i] and len(updates[i]) < 2:
                updates[i].append([now, float(value)])
            last[i] = value
    return updates


def aligned_mj(t: float, reading: float | None, updates: Sequence[Update] | None,
               default_period_s: float) -> float | None:
    """The counter at ``t`` interpolated between its update before ``t`` and its first update after (see the
    module doc); the raw ``reading`` when no update was seen, or when the first recorded one cannot be a step
    after this edge (before it, long after the polling ended, or not above the reading)."""
    if reading is None or not updates:
        return reading
    t1, c1 = updates[0]
    if not (t < t1 <= t + MAX_WAIT_S + 0.1 and c1 > reading):  # not a step after this edge: edited or corrupt
        return reading
    period = updates[1][0] - t1 if len(updates) > 1 and updates[1][0] > t1 else default_period_s
    t0 = t1 - period
    share = min(1.0, max(0.0, (t - t0) / period))
    return reading + (c1 - reading) * share
