"""Teacher forward + top-k caching vs the bare forward pass, same model and batch, on the GPU.

``ratio_vs_bare_forward`` = caching throughput / bare-forward throughput (tokens/s), with the kit's own path:
top-k and encoding on the GPU (logits/teacher.py), compact rows to the host, shards written by the background
writer to local disk. Each is timed over runs of back-to-back batches (the teacher stage's loop keeps the next
batch queued on the GPU while the host handles the last), the two alternating so that drift in clocks or
temperature hits both alike.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import llama, write_result
from distill_kit.logits.cache import CacheIndex, CacheWriter
from distill_kit.logits.teacher import cache_batches

BATCH, SEQ, K = 8, 2048, 100
ROUNDS, BATCHES = 4, 4  # rounds of BATCHES batches each, alternating bare and caching
# Teachers of two shapes, both over the 100,352-token vocabulary: the 1.2B shape of the KD benchmark's student
# (the worst case: the top-k work per token is the same for every teacher, the forward pass is the smallest), and
# the shape of Llama-3-8B, the smallest teacher distillation is usually run with.
TEACHERS = {"1.2B": dict(hidden=2048, layers=16, intermediate=5632),
            "8B": dict(hidden=4096, layers=32, intermediate=14336, kv_heads=8)}


def measure(shape: dict) -> dict:
    gc.collect()  # the previous teacher's memory
    torch.cuda.empty_cache()
    torch.manual_seed(0)
    model = llama(**shape, seq=SEQ).to("cuda", torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, 100352, SEQ) for _ in range(BATCH)]
    ids = torch.from_numpy(np.stack(tokens)).cuda()
    masks = [np.ones(SEQ, np.uint8) for _ in range(BATCH)]

    @torch.no_grad()
    def bare() -> None:  # BATCHES back-to-back forwards with full logits, no mask to check (no host sync)
        for _ in range(BATCHES):
            model(input_ids=ids, use_cache=False)

    with tempfile.TemporaryDirectory() as folder:
        index = CacheIndex(top_k=K, temperature=1.0, vocab_size=100352)
        writer = CacheWriter.open(Path(folder), index, shard_tokens=1 << 17)

        def cache() -> None:  # BATCHES through the teacher stage's own loop (stages/teacher_logits.py)
            batches = ([(t, m) for t, m in zip(tokens, masks, strict=True)] for _ in range(BATCHES))
            for sequences, error in cache_batches(model, batches, index, pad_id=0):
                for sequence in sequences:
                    writer.add(sequence, error)

        for fn in (bare, cache):  # warm-up (and compilation)
            fn()
        times = {"bare": [], "cache": []}
        for _ in range(ROUNDS):  # alternating, so drift in clocks or temperature hits both alike
            for name, fn in (("bare", bare), ("cache", cache)):
                torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        flush_start = time.perf_counter()
        done = writer.close()
        flush_s = time.perf_counter() - flush_start
    tokens_per_batch = BATCH * SEQ
    bare_tps = tokens_per_batch * BATCHES * ROUNDS / sum(times["bare"])
    cache_tps = tokens_per_batch * BATCHES * ROUNDS / (sum(times["cache"]) + flush_s)
    result = {"params": params, "ratio_vs_bare_forward": cache_tps / bare_tps, "bare_tokens_per_s": bare_tps,
              "cache_tokens_per_s": cache_tps, "final_writer_flush_s": flush_s,
              "bytes_per_token": done.bytes / done.tokens, "max_abs_logprob_error": done.max_abs_logprob_error,
              "times_s": times}
    print({k: v for k, v in result.items() if k != "times_s"}, flush=True)
    return result


def main() -> None:
    teachers = {name: measure(shape) for name, shape in TEACHERS.items()}
    write_result(
        "cache_throughput",
        {"ratio_vs_bare_forward": teachers["1.2B"]["ratio_vs_bare_forward"],
         "ratio_vs_bare_forward_8b_teacher": teachers["8B"]["ratio_vs_bare_forward"]},
        {"ratio_vs_bare_forward": ">= 0.85"},
        {"batch": BATCH, "seq": SEQ, "top_k": K, "batches_per_round": BATCHES, "rounds": ROUNDS,
         "teachers": teachers, "shapes": TEACHERS},
    )


if __name__ == "__main__":
    main()
