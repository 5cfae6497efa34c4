"""Student stage (SFT): fine-tune the student with cross-entropy on assistant tokens, with the shared trainer.

Data: in the ``sft`` pipeline, the teacher's filtered samples (``stages/filter/data/kept.jsonl``), each the prompt
conversation plus the teacher's answer as the assistant turn; in ``baseline_sft``, ``data.train`` itself through
its preprocessor. Both are rendered with the student's tokenizer: its chat template (loss on the assistant turns
only), or the tiny task's own text format for ``prompt_answer`` data. ``student.packing`` packs sequences into rows
of ``max_seq_len`` (else rows are padded). Token budget, checkpoints and exact resume are the trainer's
(``training.trainer``). Tokens counted: trained (loss-bearing) tokens.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from distill_kit._io import sha256_file
from distill_kit.assets.resolve import asset_path, tokenizer_path
from distill_kit.generation.shards import GenerationRecord
from distill_kit.rehearsal import RehearsalSettings, is_rehearsal
from distill_kit.rehearsal.generation import answer_examples
from distill_kit.rehearsal.substitute import random_model, rehearsal_record, synthetic_tokenizer, train_streams
from distill_kit.stages.base import StageContext, StageResult
from distill_kit.stages.filter import KEPT_FILE
from distill_kit.stages.training_common import train_student
from distill_kit.training import preprocess
from distill_kit.training.models import load_model, load_tokenizer
from distill_kit.training.packing import pack_examples
from distill_kit.training.threads import limit_cpu_threads
from distill_kit.training.trainer import TrainConfig


def read_records(kept: Path) -> list[GenerationRecord]:
    """The filter stage's kept samples."""
    import json

    return [GenerationRecord(**json.loads(line)) for line in kept.read_text(encoding="utf-8").splitlines() if line]


def generated_conversations(kept: Path) -> list[preprocess.Conversation]:
    """The filter stage's kept samples as conversations: prompt + the teacher's answer (stripped)."""
    rows = []
    for i, record in enumerate(read_records(kept)):
        answer = {"role": "assistant", "content": record.completion.strip()}
        rows.append(preprocess.Conversation(record.messages + [answer], i, record.id, record.reference))
    return rows


class SFTStage:
    kind = "sft"

    def setup(self, ctx: StageContext) -> None:
        doc = ctx.manifest.document
        self.ctx = ctx
        self.config = TrainConfig.from_settings(ctx.manifest.settings)
        student = ctx.manifest.settings.student
        self.max_seq_len = student.max_seq_len
        self.packing = student.packing
        if is_rehearsal(doc):  # random weights; random token streams (baseline_sft) or the rehearsed generations
            self._rehearse(doc)
        else:
            self.tokenizer_dir = tokenizer_path(doc)
            self.tokenizer = load_tokenizer(self.tokenizer_dir)
            self.processed = self._data(doc)
            self.model = load_model(asset_path(doc["models"]["student"], doc["name"]), ctx.device, "fp32")
        examples = self.processed.examples
        self.examples = pack_examples(examples, self.max_seq_len) if self.packing else examples
        self.threads = limit_cpu_threads(ctx.device, self.model)

    def _rehearse(self, doc: dict[str, Any]) -> None:
        settings = RehearsalSettings.from_document(doc)
        self.tokenizer, self.tokenizer_dir = synthetic_tokenizer(doc, self.ctx.stage_dir / "rehearsal_tokenizer")
        self.model = random_model(doc["models"]["student"], doc["name"], self.ctx.device, "fp32", settings.seed)
        self.config = replace(self.config, token_budget=settings.student_tokens, epochs=None)
        train = doc["data"]["train"]
        if doc["pipeline"] == "sft":
            kept = self._kept()
            examples = answer_examples(read_records(kept), self.tokenizer.vocab_size, self.max_seq_len,
                                       settings.seed, self.tokenizer.eos_token_id,
                                       (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id))
            dataset, files = f"rehearsal: the teacher's rehearsed generations of {train['id']}'s prompts", [
                {"name": KEPT_FILE, "sha256": sha256_file(kept)}]
        else:
            examples = train_streams(doc, self.tokenizer, self.max_seq_len, settings.student_tokens,
                                     count_targets=True)
            dataset, files = f"rehearsal: random token streams of {train['id']}'s lengths", []
        if not examples:
            raise ValueError("the filter kept no rehearsed teacher sample to train on (see the filter's summary)")
        report = preprocess.PreprocessReport(
            format=train.get("format", "prompt_answer"), dataset=dataset, revision=train.get("revision"),
            split=train.get("split"), subset=train.get("subset"), files=files, rows_read=len(examples),
            rows_kept=len(examples), examples=len(examples), tokens=sum(len(e.tokens) for e in examples),
            target_tokens=sum(e.target_tokens for e in examples))
        self.processed = preprocess.Processed(examples, [], report)

    def _kept(self) -> Path:
        kept = self.ctx.output_of("filter") / KEPT_FILE
        if not kept.exists():
            raise FileNotFoundError(f"no filtered teacher samples at {kept} (did the filter stage finish?)")
        return kept

    def _data(self, doc: dict[str, Any]) -> preprocess.Processed:
        train = doc["data"]["train"]
        if doc["pipeline"] == "baseline_sft":
            return preprocess.preprocess(train, asset_path(train, doc["name"]), self.tokenizer, self.max_seq_len)
        kept = self._kept()
        rows = generated_conversations(kept)
        report = preprocess.PreprocessReport(format=train.get("format", "prompt_answer"),
                                             dataset=f"teacher generations of {train['id']}",
                                             revision=train.get("revision"), split=train.get("split"),
                                             subset=train.get("subset"),
                                             files=[{"name": KEPT_FILE, "sha256": sha256_file(kept)}],
                                             rows_read=len(rows))
        renderer = preprocess.renderer_for(report.format, self.tokenizer)
        return preprocess.build(rows, report, renderer, self.max_seq_len)

    def run(self) -> StageResult:
        tokens, outputs = train_student(self.ctx, self.model, self.examples, self.config, self.tokenizer,
                                        self.tokenizer_dir, self.threads)
        return StageResult(tokens=tokens, token_kind="trained_tokens", outputs={
            **outputs,
            "data": self.processed.report.to_dict(),
            "rows": {"sequences": len(self.processed.examples), "rows": len(self.examples), "packing": self.packing,
                     "max_seq_len": self.max_seq_len},
            **({"rehearsal": rehearsal_record(self.ctx.manifest.document)}
               if is_rehearsal(self.ctx.manifest.document) else {}),
        })

    def cleanup(self) -> None:
        self.model = None
