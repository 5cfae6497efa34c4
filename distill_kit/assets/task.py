"""The tiny synthetic task the smoke runs distil on: its data, its text format and its exact-match metric.

This module is the task's public API. The kit's teacher, student and eval stages import it, so the text
format used in training (:func:`format_example`, :func:`encode_example`) and the one used in evaluation
(:func:`exact_match_accuracy`) are the same code.

The task (made by :mod:`distill_kit.assets.make_assets`): reverse or sort a string of 4..10 lower-case letters.

    prompt  "reverse q w e r t"      answer  "t r e w q"
    prompt  "sort q w e r t"         answer  "e q r t w"
    prompt text  "reverse q w e r t ="  completion text  " t r e w q"  (then EOS)

Token ids of one example: ``[BOS] + ids(prompt_text) + ids(completion_text) + [EOS]``; the loss (CE and KD) is
taken on the completion tokens and the EOS. The tokenizer adds BOS itself (``tokenizer(prompt_text)``).

Only :data:`TINY_DIR` and :func:`load_rows` touch the disk; torch is imported lazily, so importing this module
is cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TINY_DIR: Path = Path(__file__).resolve().parent / "tiny"
"""The packaged tiny assets: ``tokenizer/ teacher/ student/ task/{train,eval}.jsonl ASSETS.json``."""

TASK_NAME = "reverse-or-sort-letters"
PROMPT_SUFFIX = " ="
"""Appended to a row's prompt to form the prompt text; the completion text is a space then the answer."""

DEFAULT_MAX_NEW_TOKENS = 16
"""Enough for the longest answer (one token per letter) plus EOS, with margin."""


@dataclass(frozen=True)
class TaskRow:
    """One example: ``prompt`` (e.g. ``"reverse a b c"``) and the reference ``answer`` (``"c b a"``)."""

    prompt: str
    answer: str


@dataclass
class EvalResult:
    """Exact-match result: ``accuracy`` = correct / ``n``; ``samples`` holds one dict per row, in row order,
    with keys ``prompt``, ``target``, ``output`` (decoded generation, special tokens removed) and ``correct``."""

    accuracy: float
    n: int
    samples: list[dict[str, Any]] = field(default_factory=list)


def load_rows(path: str | Path) -> list[TaskRow]:
    """Read a JSONL file of ``{"prompt": str, "answer": str}`` rows (blank lines skipped).

    Raises ``ValueError`` naming the line when a row is malformed.
    """
    rows: list[TaskRow] = []
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            if (
                not isinstance(obj, dict)
                or not isinstance(obj.get("prompt"), str)
                or not isinstance(obj.get("answer"), str)
            ):
                raise ValueError(f'{path}:{lineno}: expected {{"prompt": str, "answer": str}}')
            rows.append(TaskRow(prompt=obj["prompt"], answer=obj["answer"]))
    return rows


def format_example(row: TaskRow) -> tuple[str, str]:
    """``(prompt_text, completion_text)`` exactly as trained on; the caller appends the EOS token id.

    >>> format_example(TaskRow("reverse a b c", "c b a"))
    ('reverse a b c =', ' c b a')
    """
    return row.prompt + PROMPT_SUFFIX, " " + row.answer


def encode_example(tokenizer: PreTrainedTokenizerBase, row: TaskRow) -> tuple[list[int], list[int]]:
    """Token ids ``(prompt_ids, completion_ids)`` of one example, as trained on.

    ``prompt_ids`` starts with BOS; ``completion_ids`` ends with EOS. The training sequence is their
    concatenation and the loss covers the ``completion_ids`` positions.
    """
    prompt_text, completion_text = format_example(row)
    prompt_ids = list(tokenizer(prompt_text, add_special_tokens=True)["input_ids"])
    completion_ids = list(tokenizer(completion_text, add_special_tokens=False)["input_ids"])
    return prompt_ids, completion_ids + [int(tokenizer.eos_token_id)]


def normalize(text: str) -> str:
    """The answer normalisation of the metric: strip surrounding whitespace."""
    return text.strip()


def answer_is_correct(output: str, target: str) -> bool:
    """Whether a decoded generation ``output`` matches the reference ``target`` exactly after :func:`normalize`.

    A verifier recomputes the accuracy from saved samples with this function.
    """
    return normalize(output) == normalize(target)


def exact_match_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[TaskRow],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 64,
) -> EvalResult:
    """Greedy-decode every row's prompt (batched, left padding, ``torch.no_grad``, on the model's device)
    and score the outputs with :func:`answer_is_correct`.

    The output of a row is the text generated up to (not including) the first EOS, decoded without special
    tokens. The model is put in eval mode and left so. Deterministic for a given model and rows.
    """
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = int(tokenizer.eos_token_id)
    device = next(model.parameters()).device
    model.eval()
    samples: list[dict[str, Any]] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            encoded = [encode_example(tokenizer, row)[0] for row in batch]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, ids in enumerate(encoded):  # left padding
                input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[i, width - len(ids) :] = 1
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos_id,
                pad_token_id=int(pad_id),
            )
            new_tokens = generated[:, width:].tolist()
            for row, toks in zip(batch, new_tokens, strict=True):
                if eos_id in toks:
                    toks = toks[: toks.index(eos_id)]
                output = tokenizer.decode(toks, skip_special_tokens=True)
                target = row.answer
                samples.append(
                    {
                        "prompt": row.prompt,
                        "target": target,
                        "output": output,
                        "correct": answer_is_correct(output, target),
                    }
                )
    n = len(samples)
    correct = sum(1 for s in samples if s["correct"])
    return EvalResult(accuracy=(correct / n) if n else 0.0, n=n, samples=samples)
