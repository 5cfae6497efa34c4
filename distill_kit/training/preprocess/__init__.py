"""Preprocessors of the datasets the manifests name, each taking the dataset's real schema.

``data.train.format`` picks one:

| format            | dataset (real schema)                                  | rendered with      |
|-------------------|--------------------------------------------------------|--------------------|
| chat_messages     | allenai/tulu-3-sft-mixture: id, messages, source       | chat template      |
| codeforces_cots   | open-r1/codeforces-cots: prompt, generation, messages… | chat template      |
| openr1_math       | open-r1/OpenR1-Math-220k: problem, answer, messages…   | chat template      |
| preference_pairs  | Tulu 3 preference mixtures: prompt, chosen, rejected   | chat template      |
| prompt_answer     | the kit's tiny task: prompt, answer                    | the task's format  |

:func:`preprocess` reads the files (parquet, jsonl or json; offline, from the asset cache or the package),
parses every row (a malformed one is dropped and counted by reason, never a crash), tokenizes with the given
(student's) tokenizer, truncates to the sequence length, and reports the dataset's revision, the files read and the
sha256 of the processed token ids and masks. :func:`conversations` stops before tokenizing (the teacher's
generation stage takes its prompts from there).
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from typing import Any

from distill_kit.training.preprocess.base import (
    ChatRenderer,
    Conversation,
    Dropped,
    PreprocessReport,
    Processed,
    Renderer,
    TaskRenderer,
    describe_files,
    examples_sha256,
    iter_rows,
    table_files,
    to_examples,
)

FORMATS = {
    "chat_messages": "distill_kit.training.preprocess.chat_messages",
    "codeforces_cots": "distill_kit.training.preprocess.codeforces_cots",
    "openr1_math": "distill_kit.training.preprocess.openr1_math",
    "preference_pairs": "distill_kit.training.preprocess.preference_pairs",
    "prompt_answer": "distill_kit.training.preprocess.prompt_answer",
}

__all__ = ["FORMATS", "Conversation", "PreprocessReport", "Processed", "conversations", "preprocess",
           "renderer_for"]


def renderer_for(fmt: str, tokenizer: Any) -> Renderer:
    return TaskRenderer(tokenizer) if fmt == "prompt_answer" else ChatRenderer(tokenizer)


def conversations(ref: dict[str, Any], data_path: Path, split: str | None = None
                  ) -> tuple[list[Conversation], PreprocessReport]:
    """The usable rows of a dataset reference as conversations, and the report of what was dropped and why."""
    fmt = ref.get("format", "prompt_answer")
    if fmt not in FORMATS:
        raise ValueError(f"dataset format '{fmt}' has no preprocessor (known: {', '.join(sorted(FORMATS))})")
    parse = importlib.import_module(FORMATS[fmt]).parse
    split = split or ref.get("split")
    files = table_files(Path(data_path), split, ref.get("subset"))
    report = PreprocessReport(format=fmt, dataset=ref.get("id", str(data_path)), revision=ref.get("revision"),
                              split=split, subset=ref.get("subset"),
                              files=describe_files(files, hashed=ref.get("source") != "hf"))
    kept: list[Conversation] = []
    dropped: Counter = Counter()
    for index, row in enumerate(iter_rows(files, ref.get("max_examples"))):
        report.rows_read += 1
        parsed = Dropped(index, row) if isinstance(row, str) else parse(row, index)
        if isinstance(parsed, Dropped):
            dropped[parsed.reason] += 1
        else:
            kept.append(parsed)
    report.rows_kept = len(kept)
    report.dropped = dict(sorted(dropped.items()))
    return kept, report


def preprocess(ref: dict[str, Any], data_path: Path, tokenizer: Any, max_seq_len: int,
               split: str | None = None) -> Processed:
    """Training examples of a dataset reference: read, parse, tokenize, truncate; counted and hashed."""
    rows, report = conversations(ref, data_path, split)
    return build(rows, report, renderer_for(report.format, tokenizer), max_seq_len)


def build(rows: list[Conversation], report: PreprocessReport, renderer: Renderer, max_seq_len: int) -> Processed:
    """Tokenize conversations into examples and complete ``report`` (drops at this step are added to it)."""
    examples, kept, dropped, truncated = to_examples(rows, renderer, max_seq_len)
    merged = Counter(report.dropped)
    merged.update(dropped)
    report.dropped = dict(sorted(merged.items()))
    report.rows_kept = len(kept)
    report.truncated = truncated
    report.examples = len(examples)
    report.tokens = int(sum(len(e.tokens) for e in examples))
    report.target_tokens = int(sum(e.target_tokens for e in examples))
    report.processed_sha256 = examples_sha256(examples)
    return Processed(examples, kept, report)
