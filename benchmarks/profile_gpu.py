"""Where the time goes (diagnostic, not a benchmark): the KD step and the caching path under torch.profiler."""

from __future__ import annotations

import sys
import time

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
    from benchmarks.kd_step import training_step

    model, step = training_step(compile_decoder=False, kd=True)
    ids = torch.randint(0, 100352, (4, 2048), device="cuda")

    def forward_backward_only() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = model.base_model(input_ids=ids).last_hidden_state
        hidden.float().sum().backward()

    timed("kd step", step)
    timed("decoder fwd+bwd only", forward_backward_only)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    {"cache": cache_parts, "kd": kd_profile}[sys.argv[1]]()
