"""Student stage: train the student on the teacher stage's logit cache (KD) with the shared trainer.

Reads ``stages/teacher/cache``; writes checkpoints under ``stages/student/checkpoints`` (resume picks up the
latest) and the final weights under ``stages/student/final``. Tokens counted: trained (loss-bearing) tokens.
"""

from __future__ import annotations

from distill_kit.assets.resolve import asset_path, tokenizer_path
from distill_kit.logits.cache import CacheReader
from distill_kit.stages.base import StageContext, StageResult
from distill_kit.stages.training_common import train_student
from distill_kit.training.data import Example
from distill_kit.training.models import load_model, load_tokenizer
from distill_kit.training.threads import limit_cpu_threads
from distill_kit.training.trainer import TrainConfig


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
        tokens, outputs = train_student(self.ctx, self.model, self.examples, self.config, self.tokenizer,
                                        self.tokenizer_dir, self.threads)
        return StageResult(tokens=tokens, token_kind="trained_tokens", outputs={
            **outputs,
            "teacher_cache": {"sequences": self.cache.sequences, "top_k": self.cache.top_k},
        })

    def cleanup(self) -> None:
        self.model = None
