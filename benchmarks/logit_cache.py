"""Logit-cache size and value error at k=100 over a 100,352-token vocabulary (and on the tiny teacher).

Figures: ``bytes_per_token_k100`` (file bytes of a real cache written by the kit's writer, token ids included,
divided by tokens) and ``max_abs_logprob_error`` (the writer's measured worst log-prob error) on a synthetic
peaked distribution; the same on the tiny teacher over the tiny task, and the probability-weighted error.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import write_result
from distill_kit.logits.cache import CacheIndex, CacheReader, CacheWriter, EncodedSequence

VOCAB, K = 100352, 100


def peaked_rows(n: int, generator: torch.Generator) -> torch.Tensor:
    """Log-probs like a trained LM's: Zipf-shaped over a random vocabulary order, top-1 mass around 0.4-0.9."""
    ranks = torch.arange(1, VOCAB + 1, dtype=torch.float32)
    logits = -1.1 * torch.log(ranks)[None, :].repeat(n, 1) + 0.5 * torch.randn(n, VOCAB, generator=generator)
    logits[:, 0] += 3.0 * torch.rand(n, generator=generator)
    order = torch.argsort(torch.rand(n, VOCAB, generator=generator), dim=1)
    shuffled = torch.empty_like(logits).scatter_(1, order, logits)
    return torch.log_softmax(shuffled, dim=-1)


def measure(rows_per_seq: list[torch.Tensor], vocab: int, k: int, encoding: str = "packed") -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        index = CacheIndex(top_k=k, temperature=1.0, vocab_size=vocab, encoding=encoding)
        writer = CacheWriter.open(Path(folder), index, shard_tokens=1 << 16)
        truth = []
        for logprobs in rows_per_seq:
            values, indices = logprobs.topk(k, dim=-1)
            arrays, error = index.encode_rows(indices, values)
            n = len(logprobs) + 1
            writer.add(EncodedSequence(np.arange(n) % vocab, np.ones(n, np.uint8), arrays), error)
            truth.append(values.numpy())
        done = writer.close()
        decoded = [s.topk_logprobs for s in CacheReader(Path(folder)).sequences()]
    weighted = max(float((np.exp(t) * np.abs(d - t)).sum(-1).max()) for t, d in zip(truth, decoded, strict=True))
    return {"bytes_per_token": done.bytes / done.tokens, "max_abs_logprob_error": done.max_abs_logprob_error,
            "max_prob_weighted_error": weighted, "tokens": done.tokens}


def tiny_teacher_rows(limit: int = 256) -> tuple[list[torch.Tensor], int]:
    from distill_kit.assets.resolve import TINY_DIR
    from distill_kit.training.data import load_examples
    from distill_kit.training.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(TINY_DIR / "tokenizer")
    model = load_model(TINY_DIR / "teacher", "cpu")
    examples = load_examples({"format": "prompt_answer"}, TINY_DIR / "task", tokenizer, 64)[:limit]
    rows = []
    with torch.no_grad():
        for example in examples:
            ids = torch.from_numpy(example.tokens)[None]
            rows.append(torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1))
    return rows, model.config.vocab_size


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    synthetic = [peaked_rows(255, generator) for _ in range(16)]  # 16 sequences of 256 tokens
    packed = measure(synthetic, VOCAB, K)
    reference = measure(synthetic[:2], VOCAB, K, encoding="float16")
    tiny_rows, tiny_vocab = tiny_teacher_rows()
    tiny = measure(tiny_rows, tiny_vocab, min(K, tiny_vocab))
    write_result(
        "logit_cache",
        {"bytes_per_token_k100": packed["bytes_per_token"], "max_abs_logprob_error": packed["max_abs_logprob_error"]},
        {"bytes_per_token_k100": "<= 250"},
        {"synthetic_peaked_k100": packed, "float16_reference_k100": reference,
         "tiny_teacher": {**tiny, "k": min(K, tiny_vocab), "vocab": tiny_vocab},
         "upstream_harness_bytes_per_token": 1600, "bf16_int32_bytes_per_token": 600,
         "error_bound": "per row: delta/2 + float16 rounding of the top log-prob, delta = (top - kth) / levels, "
                        "levels = 8 * value_bytes - (k - 1) (logits/codec.py)"},
    )


if __name__ == "__main__":
    main()
