"""GPU load shapes shared by the energy benchmarks."""

from __future__ import annotations

import time

import torch


def matmul_load(seconds: float, duty: float = 1.0, period_s: float = 0.2, size: int = 8192) -> int:
    """Dense bf16 matmuls for ``seconds``; with duty < 1, busy for duty*period then idle for the rest."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    launched = 0
    while time.perf_counter() < end:
        busy_until = time.perf_counter() + duty * period_s
        while time.perf_counter() < busy_until:
            for _ in range(4):
                torch.matmul(a, b)
                launched += 1
            torch.cuda.synchronize()
        if duty < 1.0:
            time.sleep((1 - duty) * period_s)
    torch.cuda.synchronize()
    return launched


def idle(seconds: float) -> None:
    torch.cuda.synchronize()
    time.sleep(seconds)
