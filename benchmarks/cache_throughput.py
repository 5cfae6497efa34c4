"""Teacher forward + top-k caching vs the bare forward pass, same model and batch, on the GPU.

``ratio_vs_bare_forward`` = caching throughput / bare-forward throughput (tokens/s), with the kit's own path:
top-k and encoding on the GPU (logits/teacher.py), compact rows to the host, shards written by the background
writer to local disk. Batches alternate between the two so drift in clocks or temperature hits both alike.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import llama, write_result
from distill_kit.logits.cache import CacheIndex, CacheWriter
from distill_kit.logits.teacher import split_sequences, teacher_topk

BATCH, SEQ, ROUNDS, K = 8, 2048, 8, 100


def main() -> None:
    torch.manual_seed(0)
    model = llama(hidden=2048, layers=16, intermediate=5632, seq=SEQ).to("cuda", torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, 100352, SEQ) for _ in range(BATCH)]
    ids = torch.from_numpy(np.stack(tokens)).cuda()
    mask = torch.ones_like(ids)
    masks = [np.ones(SEQ, np.uint8) for _ in range(BATCH)]

    @torch.no_grad()
    def bare() -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    with tempfile.TemporaryDirectory() as folder:
        index = CacheIndex(top_k=K, temperature=1.0, vocab_size=100352)
        writer = CacheWriter.open(Path(folder), index, shard_tokens=1 << 17)

        def cache() -> None:  # the teacher stage's own path (stages/teacher_logits.py)
            arrays, error = teacher_topk(model, ids, mask, index)
            for sequence in split_sequences(arrays, tokens, masks):
                writer.add(sequence, error)

        for fn in (bare, cache, bare, cache):  # warm-up
            fn()
        times = {"bare": [], "cache": []}
        for _ in range(ROUNDS):
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
    bare_tps = tokens_per_batch * ROUNDS / sum(times["bare"])
    cache_tps = tokens_per_batch * ROUNDS / (sum(times["cache"]) + flush_s)
    write_result(
        "cache_throughput",
        {"ratio_vs_bare_forward": cache_tps / bare_tps},
        {"ratio_vs_bare_forward": ">= 0.85"},
        {"params": params, "batch": BATCH, "seq": SEQ, "top_k": K, "bare_tokens_per_s": bare_tps,
         "cache_tokens_per_s": cache_tps, "final_writer_flush_s": flush_s, "bytes_per_token": done.bytes / done.tokens,
         "max_abs_logprob_error": done.max_abs_logprob_error, "times_s": times},
    )


if __name__ == "__main__":
    main()
