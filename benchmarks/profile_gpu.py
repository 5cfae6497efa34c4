"""Where the time goes (diagnostic, not a benchmark): the KD step and the caching path, part by part, and the
alternatives tried for each part. Prints timings; writes nothing under benchmarks/results."""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import llama
from distill_kit.logits.cache import CacheIndex
from distill_kit.logits.teacher import teacher_topk


def timed(label: str, fn, n: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / n * 1000
    print(f"{label}: {ms:.1f} ms", flush=True)
    return ms


def cache_parts() -> None:
    from distill_kit.logits.codec import encode_measured, encoder
    from distill_kit.logits.teacher import logsumexp_rows, topk_rows

    model = llama(hidden=2048, layers=16, intermediate=5632).to(torch.bfloat16).eval()
    ids = torch.randint(0, 100352, (8, 2048), device="cuda")
    mask = torch.ones_like(ids)
    index = CacheIndex(top_k=100, temperature=1.0, vocab_size=100352)
    with torch.no_grad():
        flat = model(input_ids=ids, attention_mask=mask).logits.view(-1, 100352)
        timed("forward", lambda: model(input_ids=ids, attention_mask=mask).logits)
        timed("topk, block-max prefilter (kit)", lambda: topk_rows(flat, 100))
        timed("topk, plain torch.topk", lambda: flat.topk(100, dim=-1))
        timed("topk, prefilter block 128", lambda: topk_rows(flat, 100, block=128))
        timed("topk, prefilter block 512", lambda: topk_rows(flat, 100, block=512))
        timed("logsumexp compiled (kit)", lambda: logsumexp_rows(flat, 1.0))
        values, indices = topk_rows(flat, 100)
        lp = values.float() - logsumexp_rows(flat, 1.0)[:, None]
        timed("encode eager", lambda: encode_measured(indices, lp, index.codec))
        timed("encode compiled (kit)", lambda: encoder(index.codec, flat.device)(indices, lp))
        timed("encode_rows to host", lambda: index.encode_rows(indices, lp))
        timed("teacher_topk total", lambda: teacher_topk(model, ids, mask, index))


def kd_parts(variant: str) -> None:
    """One variant per process: compiled graphs (and the attention kernel they chose) never carry over."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmarks.kd_step import BATCH, SEQ, training_step
    from distill_kit.training.trainer import model_flops_per_token

    compiled, kd, bf16 = "compile" in variant, "kd" in variant, "bf16" in variant
    backends = [SDPBackend.FLASH_ATTENTION] if "flash" in variant else [
        SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(backends):
        model, step = training_step(compiled, kd, bf16)
        start = time.perf_counter()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        warm = time.perf_counter() - start
        ms = timed(f"{variant} (warm-up {warm:.0f} s)", step, n=10)
        mfu = model_flops_per_token(model, SEQ) * BATCH * SEQ / (ms / 1000) / 989e12
        print(f"   mfu {mfu:.3f}, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
        if "profile" in variant:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    step()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))


if __name__ == "__main__":
    if sys.argv[1] == "cache":
        cache_parts()
    else:  # kd VARIANT: e.g. kd-eager, ce-compile, kd-compile-flash, kd-compile-bf16, kd-compile-profile
        kd_parts(sys.argv[2])
