"""CPU threads for tiny models.

A model of a few hundred thousand parameters runs ops far too small to split across threads; on a shared machine
with more runnable processes than cores, torch's intra-op threads then spend their time waiting for each other.
Measured on the kit's 2-core test machine under a load of about 9 (2026-11-25): 30 training steps of the tiny
student took 34 s with torch's default 2 threads and 1.5 s with 1. Stages running a small model on the CPU use one
thread unless ``OMP_NUM_THREADS`` says otherwise, and record the choice in their outputs.
"""

from __future__ import annotations

import os
from typing import Any

SMALL_MODEL_PARAMS = 20_000_000


def limit_cpu_threads(device: str, model: Any) -> dict[str, Any]:
    import torch

    params = sum(p.numel() for p in model.parameters())
    if device != "cpu":
        return {"threads": None, "why": "GPU run"}
    if os.environ.get("OMP_NUM_THREADS"):
        return {"threads": torch.get_num_threads(), "why": "OMP_NUM_THREADS is set"}
    if params >= SMALL_MODEL_PARAMS:
        return {"threads": torch.get_num_threads(), "why": "torch default"}
    torch.set_num_threads(1)
    return {"threads": 1, "why": f"model of {params:,} parameters on the CPU: one intra-op thread"}
