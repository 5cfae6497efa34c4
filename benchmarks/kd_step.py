"""A KD training step vs the CE-only step of the same ~1B student (seq 2048), with the kit's trainer path.

Figures: ``kd_over_ce_step_time``, ``mfu`` (of the KD step; FLOPs per token = 6 x matmul parameters, LM head
included, input embedding excluded, + 12 x layers x hidden x seq; against the 989 TFLOP/s dense bf16 peak of an
H100 SXM), ``kd_over_ce_peak_memory``. Each configuration (eager / torch.compile) is measured; the figures are
those of the fastest KD configuration, the others are in ``details``.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import llama, write_result
from distill_kit.training.data import Example, collate
from distill_kit.training.trainer import TrainConfig, Trainer, build_optimizer, model_flops_per_token, peak_flops

BATCH, SEQ, K, STEPS = 4, 2048, 100, 8


def training_step(compile_decoder: bool, kd: bool, bf16_weights: bool = False, with_trainer: bool = False):
    """The kit's trainer step on a ~1.2B Llama and one random KD batch: (model, step function[, trainer])."""
    torch.manual_seed(0)
    model = llama(hidden=2048, layers=16, intermediate=5632, seq=SEQ).cuda()
    if bf16_weights:  # bf16 parameters and optimizer state: no per-step casts (not the trainer's default)
        model = model.to(torch.bfloat16)
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(BATCH):
        logprobs = torch.log_softmax(torch.randn(SEQ - 1, K) * 2, -1).sort(-1, descending=True).values
        examples.append(Example(rng.integers(0, 100352, SEQ), np.ones(SEQ, np.uint8),
                                rng.integers(0, 100352, (SEQ - 1, K)), logprobs.numpy()))
    config = TrainConfig(batch_size=BATCH, grad_accum=1, seed=0, token_budget=10**9, precision="bf16",
                         ce_weight=0.8 if kd else 1.0, kd_weight=0.2 if kd else 0.0, compile=compile_decoder)
    trainer = Trainer(model, examples, config, Path(tempfile.mkdtemp()), "cuda", 0)
    optimizer = build_optimizer(model, config, "cuda")
    batch = collate(examples, 0)

    def step() -> None:  # the trainer's own step: forward, chunked head + loss, backward, clipping, AdamW
        trainer.train_step([batch], optimizer)

    return (model, step, trainer) if with_trainer else (model, step)


def measure(compile_decoder: bool, kd: bool, bf16_weights: bool = False) -> dict:
    model, step = training_step(compile_decoder, kd, bf16_weights)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / STEPS
    tokens = BATCH * SEQ
    peak, note = peak_flops("cuda")
    flops = model_flops_per_token(model, SEQ) * tokens
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    result = {"compile": compile_decoder, "bf16_weights": bf16_weights, "compiled_graphs": graphs, "kd": kd,
              "step_s": seconds, "tokens_per_s": tokens / seconds,
              "mfu": flops / seconds / peak if peak else None, "mfu_note": note,
              "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
              "params": sum(p.numel() for p in model.parameters()), "flops_per_step": flops}
    print(result, flush=True)
    return result


def measure_fresh(compile_decoder: bool, kd: bool, bf16_weights: bool = False) -> dict:
    """One configuration; its model and optimizer are freed before the next one is built."""
    result = measure(compile_decoder, kd, bf16_weights)
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main() -> None:
    # the kit's trainer as configured by a manifest: fp32 master weights under bf16 autocast, eager or compiled
    runs = {(c, kd): measure_fresh(c, kd) for c in (False, True) for kd in (False, True)}
    best = min((False, True), key=lambda c: runs[(c, True)]["step_s"])
    kd, ce = runs[(best, True)], runs[(best, False)]
    extra = [measure_fresh(True, kd, bf16_weights=True) for kd in (False, True)]
    write_result(
        "kd_step",
        {"kd_over_ce_step_time": kd["step_s"] / ce["step_s"], "mfu": kd["mfu"],
         "kd_over_ce_peak_memory": kd["peak_memory_gib"] / ce["peak_memory_gib"]},
        {"kd_over_ce_step_time": "<= 1.10", "mfu": ">= 0.40"},
        {"batch": BATCH, "seq": SEQ, "top_k": K, "chosen_compile": best,
         "runs": [runs[key] for key in sorted(runs)],
         "bf16_weights_runs": extra,
         "flops_convention": "6 x matmul params (LM head included, input embedding excluded) + 12 x layers x "
                             "hidden x seq per token; dense bf16 peak 989 TFLOP/s (H100 SXM)"},
    )


if __name__ == "__main__":
    main()
