"""Does measuring slow training? Training-step throughput of a ~0.5B Llama with the sampler running vs not.

Blocks of steps alternate (off, on, off, on, ...) in one process; ``throughput_ratio`` = median over adjacent
pairs of tokens/s with the sampler / tokens/s without.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import llama, write_result
from distill_kit.energy.meter import EnergyMeter
from distill_kit.training.data import Example, collate
from distill_kit.training.trainer import TrainConfig, Trainer, build_optimizer

BATCH, SEQ, STEPS_PER_BLOCK, PAIRS = 8, 2048, 15, 5


def main() -> None:
    torch.manual_seed(0)
    model = llama(hidden=1024, layers=24, seq=SEQ).cuda()
    params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    examples = [Example(rng.integers(0, 100352, SEQ), np.ones(SEQ, np.uint8)) for _ in range(BATCH)]
    config = TrainConfig(batch_size=BATCH, grad_accum=1, seed=0, token_budget=10**9, precision="bf16")
    trainer = Trainer(model, examples, config, Path(tempfile.mkdtemp()), "cuda", 0)
    optimizer = build_optimizer(model, config, "cuda")
    batch = collate(examples, 0)

    def steps(n: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            trainer.train_step([batch], optimizer)
        torch.cuda.synchronize()
        return n * BATCH * SEQ / (time.perf_counter() - start)

    steps(5)  # warm-up
    meter = EnergyMeter(interval_ms=100, use_codecarbon=False)
    off, on = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(PAIRS):
            off.append(steps(STEPS_PER_BLOCK))
            window = meter.begin(Path(tmp) / str(pair), attempt=1)
            on.append(steps(STEPS_PER_BLOCK))
            meter.end(window, "finished")
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    write_result(
        "energy_overhead",
        {"throughput_ratio": statistics.median(ratios)},
        {"throughput_ratio": ">= 0.995"},
        {"params": params, "batch": BATCH, "seq": SEQ, "steps_per_block": STEPS_PER_BLOCK,
         "tokens_per_s_off": off, "tokens_per_s_on": on, "pair_ratios": ratios,
         "mean_ratio": sum(on) / sum(off), "sampler_interval_ms": 100},
    )


if __name__ == "__main__":
    main()
