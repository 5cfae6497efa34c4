"""Student stage: train the student on the teacher stage's logit cache (KD) with the shared trainer.

Reads ``stages/teacher/cache``; writes checkpoints under ``stages/student/checkpoints`` (resume picks up the
latest) and the final weights under ``stages/student/final``. Tokens counted: trained (loss-bearing) tokens.
"""

from __future__ import annotations

import shutil

from distill_kit._io import sha256_file
from distill_kit.assets.resolve import asset_path, tokenizer_path
from distill_kit.logits.cache import CacheReader
from distill_kit.stages.base import StageContext, StageResult
from distill_kit.training.data import Example
from distill_kit.training.models import load_model, load_tokenizer
from distill_kit.training.threads import limit_cpu_threads
from distill_kit.training.trainer import TrainConfig, Trainer


class StudentStage:
    kind = "kd"

    def setup(self, ctx: StageContext) -> None:
        doc = ctx.manifest.document
        self.ctx = ctx
        self.config = TrainConfig.from_manifest(doc)
        self.tokenizer_dir = tokenizer_path(doc)
        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        self.model = load_model(asset_path(doc["models"]["student"], doc["name"]), ctx.device, "fp32")
        self.threads = limit_cpu_threads(ctx.device, self.model)
        reader = CacheReader(ctx.output_of("teacher") / "cache")
        if reader.index.vocab_size != int(self.model.config.vocab_size):
            raise ValueError(f"teacher vocabulary ({reader.index.vocab_size}) differs from the student's "
                             f"({self.model.config.vocab_size}); a vocabulary mapping is needed")
        self.cache = reader.index
        self.examples = [Example(s.tokens, s.loss_mask, s.topk_indices, s.topk_logprobs)
                         for s in reader.sequences()]

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
            "steps": result.steps,
            "effective_batch": {"sequences": result.effective_batch_sequences,
                                "batch_size": self.config.batch_size, "grad_accum": self.config.grad_accum},
            "trained_tokens": result.trained_tokens,
            "input_tokens": result.input_tokens,
            "token_budget": self.config.token_budget,
            "loss": {"ce_weight": self.config.ce_weight, "kd_weight": self.config.kd_weight,
                     "kd": vars(self.config.kd)},
            "loss_curve": result.loss_curve,
            "final_loss": result.loss_curve[-1]["loss"] if result.loss_curve else None,
            "resumed_from_step": result.resumed_from_step,
            "train_seconds": result.train_seconds,
            "tokens_per_s_this_attempt": result.tokens_per_s,
            "mfu": result.mfu,
            "mfu_note": result.mfu_note,
            "teacher_cache": {"sequences": self.cache.sequences, "top_k": self.cache.top_k},
            "cpu_threads": self.threads,
        })

    def cleanup(self) -> None:
        self.model = None
