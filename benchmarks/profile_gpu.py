"""Where the time goes (diagnostic, not a benchmark): the KD step and the caching path under torch.profiler."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import llama
from distill_kit.logits.cache import CacheIndex
from distill_kit.logits.teacher import teacher_topk


def timed(label: str, fn, n: int = 5) -> None:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    print(f"{label}: {(time.perf_counter() - start) / n * 1000:.1f} ms", flush=True)


def cache_parts() -> None:
    model = llama(hidden=2048, layers=16, intermediate=5632).to(torch.bfloat16).eval()
    ids = torch.randint(0, 100352, (8, 2048), device="cuda")
    mask = torch.ones_like(ids)
    index = CacheIndex(top_k=100, temperature=1.0, vocab_size=100352)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        flat = logits.reshape(-1, logits.shape[-1])
        timed("forward", lambda: model(input_ids=ids, attention_mask=mask).logits)
        timed("forward, no mask", lambda: model(input_ids=ids).logits)
        timed("bool-index rows", lambda: logits[mask[:, 1:].bool()])
        from distill_kit.logits.teacher import logsumexp_rows, topk_rows

        timed("topk bf16", lambda: flat.topk(100, dim=-1))
        timed("topk two-stage", lambda: topk_rows(flat, 100, two_stage=True))
        timed("logsumexp fp32", lambda: torch.logsumexp(flat.float(), dim=-1))
        timed("logsumexp compiled", lambda: logsumexp_rows(flat, 1.0))
        values, indices = flat.topk(100, dim=-1)
        lp = values.float()
        timed("encode_rows (+error)", lambda: index.encode_rows(indices, lp))
        timed("teacher_topk total", lambda: teacher_topk(model, ids, mask, index))


def kd_profile() -> None:
    from benchmarks.kd_step import BATCH, SEQ, K  # noqa: F401
    from distill_kit.training.data import Example, collate
    from distill_kit.training.trainer import TrainConfig, Trainer, build_optimizer

    model = llama(hidden=2048, layers=16, intermediate=5632)
    rng = np.random.default_rng(0)
    examples = [Example(rng.integers(0, 100352, SEQ), np.ones(SEQ, np.uint8), rng.integers(0, 100352, (SEQ - 1, K)),
                        np.sort(rng.random((SEQ - 1, K)).astype(np.float32) * -5, -1)[:, ::-1].copy())
                for _ in range(BATCH)]
    config = TrainConfig(batch_size=BATCH, grad_accum=1, seed=0, token_budget=10**9, precision="bf16",
                         ce_weight=0.8, kd_weight=0.2)
    trainer = Trainer(model, examples, config, __import__("pathlib").Path("/tmp/p"), "cuda", 0)
    optimizer = build_optimizer(model, config, "cuda")
    batch = collate(examples, 0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = trainer._micro_loss(batch, batch.target_tokens)
        loss.backward()
        optimizer.step()

    def forward_backward_only() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = model.base_model(input_ids=batch.input_ids.cuda()).last_hidden_state
        hidden.float().sum().backward()

    timed("kd step", step)
    timed("decoder fwd+bwd only", forward_backward_only)
    timed("optimizer.step", optimizer.step)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    {"cache": cache_parts, "kd": kd_profile}[sys.argv[1]]()
