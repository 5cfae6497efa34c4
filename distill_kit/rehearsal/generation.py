"""Prompts and answer lengths of a rehearsed teacher generation (synthetic-data SFT).

Each prompt stands for one row of ``data.train``: a sequence length is drawn from the data's length distribution
(cut at the teacher's ``max_seq_len``); its last ``target_share`` is the assistant answer (as in
``rehearsal.streams``), the rest the prompt, made of random token ids. Prompts are drawn until they total the
rehearsal's ``teacher_tokens`` prompt tokens (the last one cut to meet it). Random weights never produce EOS, so the
answer's length is drawn too: the target part of the same sequence, in generated tokens (EOS included), cut at
``max_new_tokens`` (a cut answer ends unfinished, as a real one would). The decode backend then runs each batch
exactly as long as its longest drawn answer, as a real batch runs until its longest answer ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill_kit.generation.shards import GenerationRecord
from distill_kit.rehearsal.shapes import LengthDistribution
from distill_kit.training.data import Example

_STREAM = 23  # the generator's stream under the run's seed (token streams use 17)


@dataclass(frozen=True)
class RehearsalPrompt:
    ids: list[int]
    answer_tokens: int  # generated tokens of its drawn answer, EOS included unless cut at max_new_tokens
    finished: bool  # False: the drawn answer was longer than max_new_tokens


def split_lengths(lengths: np.ndarray, target_share: float) -> tuple[np.ndarray, np.ndarray]:
    """``(prompt, answer)`` tokens of sequences of ``lengths``: the answer is the last ``target_share`` (at least
    one token, and one token is always left to the prompt), as ``rehearsal.streams`` masks it."""
    lengths = np.asarray(lengths, dtype=np.int64)
    answers = np.minimum(lengths - 1, np.maximum(1, np.rint(lengths * target_share).astype(np.int64)))
    return lengths - answers, answers


def mean_answer_tokens(lengths: LengthDistribution, max_seq_len: int, max_new_tokens: int) -> float:
    """Mean generated tokens per sample: the answer part of the data's sequences, cut at ``max_new_tokens``."""
    drawn = lengths.sample(np.random.default_rng(0), 200_000, max_seq_len)
    return float(np.minimum(split_lengths(drawn, lengths.target_share)[1], max_new_tokens).mean())


def mean_prompt_tokens(lengths: LengthDistribution, max_seq_len: int) -> float:
    """Mean prompt tokens per row: the non-answer part of the data's sequences."""
    drawn = lengths.sample(np.random.default_rng(0), 200_000, max_seq_len)
    return float(split_lengths(drawn, lengths.target_share)[0].mean())


def first_prompts_tokens(lengths: LengthDistribution, max_seq_len: int, count: int, seed: int) -> int:
    """Prompt tokens of the first ``count`` prompts (at most 1,024) that ``rehearsal_prompts`` draws under ``seed``:
    as its budget, exactly ``count`` prompts are drawn (the first chunk of lengths is drawn before any ids)."""
    if not 0 < count <= 1024:
        raise ValueError(f"count must be 1-1024, not {count}")
    rng = np.random.default_rng([seed, _STREAM])
    prompt_lengths, _ = split_lengths(lengths.sample(rng, 1024, max_seq_len), lengths.target_share)
    return int(prompt_lengths[:count].sum())


def rehearsal_prompts(lengths: LengthDistribution, vocab_size: int, max_seq_len: int, max_new_tokens: int,
                      budget_tokens: int, seed: int, special_ids: tuple[int, ...] = ()) -> list[RehearsalPrompt]:
    """Random prompts totalling ``budget_tokens`` prompt tokens, each with its drawn answer length (seeded)."""
    rng = np.random.default_rng([seed, _STREAM])
    prompts: list[RehearsalPrompt] = []
    total = 0
    while total < budget_tokens:
        prompt_lengths, answer_lengths = split_lengths(lengths.sample(rng, 1024, max_seq_len), lengths.target_share)
        for n, answer in zip(prompt_lengths.tolist(), answer_lengths.tolist(), strict=True):
            n = min(n, budget_tokens - total)
            ids = rng.integers(0, vocab_size, size=n, dtype=np.int64)
            for special in special_ids:  # a prompt never holds a pad/eos
                ids[ids == special] = (special + 1) % vocab_size
            prompts.append(RehearsalPrompt(ids.tolist(), min(answer, max_new_tokens), answer <= max_new_tokens))
            total += n
            if total >= budget_tokens:
                break
    return prompts


def answer_examples(records: list[GenerationRecord], vocab_size: int, max_seq_len: int, seed: int, eos_id: int,
                    special_ids: tuple[int, ...] = ()) -> list[Example]:
    """The student's SFT sequences of rehearsed generations: a random prompt of the record's prompt length (the
    student re-renders a prompt with its own tokenizer; the ids are random either way), then the teacher's answer
    ids (and EOS where it finished), the loss on the answer; cut at ``max_seq_len``."""
    examples = []
    for record in records:
        rng = np.random.default_rng([seed, _STREAM, record.prompt_index, record.sample])
        prompt = rng.integers(0, vocab_size, size=max(1, record.prompt_tokens), dtype=np.int64)
        for special in special_ids:
            prompt[prompt == special] = (special + 1) % vocab_size
        answer = np.asarray(record.completion_ids, dtype=np.int64) % vocab_size
        if record.finish_reason == "stop":
            answer = np.append(answer, eos_id)
        tokens = np.concatenate([prompt, answer])[:max_seq_len]
        mask = np.zeros(len(tokens), dtype=np.uint8)
        mask[len(prompt):] = 1
        if mask[1:].any():
            examples.append(Example(tokens, mask))
    return examples
