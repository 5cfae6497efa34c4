"""Student stage (SFT): fine-tune the student with cross-entropy on assistant tokens, with the shared trainer.

Data: in the ``sft`` pipeline, the teacher's filtered samples (``stages/filter/data/kept.jsonl``), each the prompt
conversation plus the teacher's answer as the assistant turn; in ``baseline_sft``, ``data.train`` itself through
its preprocessor. Both are rendered with the student's tokenizer: its chat template (loss on the assistant turns
only), or the tiny task's own text format for ``prompt_answer`` data. ``student.packing`` packs sequences into rows
of ``max_seq_len`` (else rows are padded). Token budget, checkpoints and exact resume are the trainer's
(``training.trainer``). Tokens counted: trained (loss-bearing) tokens.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from distill_kit._io import sha256_file
from distill_kit.assets.resolve import asset_path, tokenizer_path
from distill_kit.generation.shards import GenerationRecord
from distill_kit.stages.base import StageContext, StageResult
from distill_kit.stages.filter import KEPT_FILE
from distill_kit.training import preprocess
from distill_kit.training.models import load_model, load_tokenizer
from distill_kit.training.packing import pack_examples
from distill_kit.training.threads import limit_cpu_threads
from distill_kit.training.trainer import TrainConfig, Trainer


def generated_conversations(kept: Path) -> list[preprocess.Conversation]:
    """The filter stage's kept samples as conversations: prompt + the teacher's answer (stripped)."""
    import json

    rows = []
    for i, line in enumerate(kept.read_text(encoding="utf-8").splitlines()):
        record = GenerationRecord(**json.loads(line))
        answer = {"role": "assistant", "content": record.completion.strip()}
        rows.append(preprocess.Conversation(record.messages + [answer], i, record.id, record.reference))
    return rows


class SFTStage:
    kind = "sft"

    def setup(self, ctx: StageContext) -> None:
        doc = ctx.manifest.document
        self.ctx = ctx
        self.config = TrainConfig.from_manifest(doc)
        student = doc.get("student", {})
        self.max_seq_len = int(student.get("max_seq_len", 1024))
        self.packing = bool(student.get("packing", False))
        self.tokenizer_dir = tokenizer_path(doc)
        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        self.processed = self._data(doc)
        examples = self.processed.examples
        self.examples = pack_examples(examples, self.max_seq_len) if self.packing else examples
        self.model = load_model(asset_path(doc["models"]["student"], doc["name"]), ctx.device, "fp32")
        self.threads = limit_cpu_threads(ctx.device, self.model)

    def _data(self, doc: dict[str, Any]) -> preprocess.Processed:
        train = doc["data"]["train"]
        if doc["pipeline"] == "baseline_sft":
            return preprocess.preprocess(train, asset_path(train, doc["name"]), self.tokenizer, self.max_seq_len)
        kept = self.ctx.output_of("filter") / KEPT_FILE
        if not kept.exists():
            raise FileNotFoundError(f"no filtered teacher samples at {kept} (did the filter stage finish?)")
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
        trainer = Trainer(self.model, self.examples, self.config, self.ctx.stage_dir, self.ctx.device,
                          int(self.tokenizer.pad_token_id), track=self.ctx.progress.track)
        result = trainer.train()
        for item in self.tokenizer_dir.iterdir():  # the checkpoint is usable on its own (eval, lm-eval)
            if item.is_file():
                shutil.copy2(item, result.final_dir)
        weights = sha256_file(self.ctx.stage_dir / "final" / "model.safetensors")
        return StageResult(tokens=result.trained_tokens, token_kind="trained_tokens", outputs={
            "final": {"path": "final", "weights_sha256": weights},
            "data": self.processed.report.to_dict(),
            "rows": {"sequences": len(self.processed.examples), "rows": len(self.examples), "packing": self.packing,
                     "max_seq_len": self.max_seq_len},
            "steps": result.steps,
            "effective_batch": {"sequences": result.effective_batch_sequences,
                                "batch_size": self.config.batch_size, "grad_accum": self.config.grad_accum},
            "trained_tokens": result.trained_tokens,
            "input_tokens": result.input_tokens,
            "token_budget": self.config.token_budget,
            "loss": {"ce_weight": self.config.ce_weight, "kd_weight": self.config.kd_weight},
            "loss_curve": result.loss_curve,
            "final_loss": result.loss_curve[-1]["loss"] if result.loss_curve else None,
            "resumed_from_step": result.resumed_from_step,
            "train_seconds": result.train_seconds,
            "tokens_per_s_this_attempt": result.tokens_per_s,
            "mfu": result.mfu,
            "mfu_note": result.mfu_note,
            "cpu_threads": self.threads,
        })

    def cleanup(self) -> None:
        self.model = None
