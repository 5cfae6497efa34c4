"""Teacher stage (KD): run the teacher over the training sequences and cache its top-k log-probs.

The cache (``stages/teacher/cache``, format in ``distill_kit.logits.cache``) is written by a background thread,
shard by shard; a killed stage resumes after its last whole shard. Tokens counted: teacher forward tokens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np

from distill_kit import rundir_layout as layout
from distill_kit.assets.resolve import asset_path, tokenizer_path
from distill_kit.distributed.rank import barrier, current
from distill_kit.distributed.sharding import length_grouped_batches
from distill_kit.logits.cache import CacheIndex, CacheWriter, EncodedSequence
from distill_kit.logits.teacher import cache_batches
from distill_kit.rehearsal import RehearsalSettings, is_rehearsal
from distill_kit.rehearsal.substitute import random_model, rehearsal_record, synthetic_tokenizer, train_streams
from distill_kit.stages.base import StageContext, StageResult
from distill_kit.stages.cache_merge import RankCacheWriter, merge_parts
from distill_kit.training.data import load_examples
from distill_kit.training.models import load_model, load_tokenizer
from distill_kit.training.threads import limit_cpu_threads


class TeacherLogitsStage:
    kind = "teacher_logits"

    def setup(self, ctx: StageContext) -> None:
        doc = ctx.manifest.document
        self.ctx = ctx
        self.settings = ctx.manifest.settings.teacher
        logits = self.settings.logits
        if logits.top_k is None:
            raise ValueError("teacher.logits.top_k is not set (a kd manifest must name it)")
        self.top_k = logits.top_k
        self.temperature = logits.temperature
        self.shard_tokens = logits.shard_tokens
        self.batch_size = self.settings.batch_size
        teacher_ref = doc["models"]["teacher"]
        max_len = self.max_len = self.settings.max_seq_len
        if is_rehearsal(doc):
            self._rehearse(doc, max_len)
        else:
            self.tokenizer = load_tokenizer(tokenizer_path(doc))
            self.model = load_model(asset_path(teacher_ref, doc["name"]), ctx.device)
            train = doc["data"]["train"]
            self.examples = load_examples(train, asset_path(train, doc["name"]), self.tokenizer, max_len)
        self.threads = limit_cpu_threads(ctx.device, self.model)
        vocab = int(self.model.config.vocab_size)
        self.index = CacheIndex(top_k=min(self.top_k, vocab), temperature=self.temperature, vocab_size=vocab,
                                encoding=logits.encoding, value_bytes=logits.value_bytes,
                                teacher={k: teacher_ref.get(k) for k in ("source", "id", "revision", "sha256")})
        self.index.codec.validate()
        self.rank = current()
        if self.rank.spread:  # this rank's block of the planned shards (stages/cache_merge.py)
            self.writer = RankCacheWriter.open_part(ctx.stage_dir / layout.LOGIT_CACHE, self.index, self.shard_tokens,
                                                    [len(e.tokens) for e in self.examples], self.rank)
        else:
            self.writer = CacheWriter.open(ctx.stage_dir / layout.LOGIT_CACHE, self.index, self.shard_tokens)

    def _rehearse(self, doc: dict, max_len: int) -> None:
        """Random weights of the teacher's shape on the device, random token streams of the data's lengths."""
        settings = RehearsalSettings.from_document(doc)
        self.tokenizer, _ = synthetic_tokenizer(doc, self.ctx.stage_dir / "rehearsal_tokenizer")
        self.model = random_model(doc["models"]["teacher"], doc["name"], self.ctx.device, "auto", settings.seed,
                                  settings.stand_in_teacher)
        self.examples = train_streams(doc, self.tokenizer, max_len, settings.teacher_tokens)
        stand_in = " (a one-layer stand-in: its cost is taken from elsewhere)" if settings.stand_in_teacher else ""
        self.ctx.progress.log(f"teacher: rehearsal, random {type(self.model).__name__} weights{stand_in}, "
                              f"{len(self.examples)} random sequences ({settings.teacher_tokens:,} tokens)")

    def run(self) -> StageResult:
        # Batches are formed inside fixed windows of the data whatever the resume point or rank
        # (distributed/sharding.py), so a resumed teacher computes every sequence in the same batch (same padding,
        # same numerics) as an uninterrupted one would. Within a window they are sorted by length, so their
        # sequences arrive out of order: they wait here (one window at most) and reach the writer in data order.
        start = self.writer.sequences_done
        end = getattr(self.writer, "end_sequence", len(self.examples))  # a rank's block ends before the data's
        lengths = [len(e.tokens) for e in self.examples]

        def plan() -> Iterator[list[int]]:  # twice: once to count the batches for the progress bar
            return length_grouped_batches(lengths, start, end, self.batch_size, self.max_len)

        if start and not self.rank.spread:
            self.ctx.progress.log(f"teacher: resuming after {start} cached sequences")
        positions: deque[list[int]] = deque()  # the batches handed to the GPU and not yet back

        def batches() -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
            for batch in plan():
                positions.append(batch)
                yield [(self.examples[i].tokens, self.examples[i].loss_mask) for i in batch]

        cached = cache_batches(self.model, batches(), self.index, int(self.tokenizer.pad_token_id))
        waiting: dict[int, tuple[EncodedSequence, float]] = {}
        next_position = start
        for sequences, error in self.ctx.progress.track(cached, sum(1 for _ in plan()),
                                                        "teacher: caching top-k log-probs"):
            for position, sequence in zip(positions.popleft(), sequences, strict=True):
                if start <= position < end:
                    waiting[position] = (sequence, error)
            while next_position in waiting:
                self.writer.add(*waiting.pop(next_position))
                next_position += 1
        if next_position != end:
            raise RuntimeError(f"teacher: sequences {next_position}..{end - 1} were never cached (batching bug)")
        index = self.writer.close()
        self.writer = None
        if self.rank.spread:
            barrier()  # every rank's part is closed
            if not self.rank.main:
                return StageResult(tokens=0, token_kind="teacher_forward_tokens")
            index = merge_parts(self.ctx.stage_dir / "cache", self.rank.world, len(self.examples))
        forward_tokens = int(sum(len(e.tokens) for e in self.examples))
        return StageResult(tokens=forward_tokens, token_kind="teacher_forward_tokens", outputs={
            "cache": {"path": layout.LOGIT_CACHE, "top_k": index.top_k, "temperature": index.temperature,
                      "vocab_size": index.vocab_size, "shards": len(index.shards), "sequences": index.sequences,
                      "tokens": index.tokens, "bytes": index.bytes,
                      "bytes_per_token": index.bytes / index.tokens if index.tokens else None,
                      "encoding": index.encoding, "row_bytes": index.codec.row_bytes if index.encoding == "packed"
                      else None, "max_abs_logprob_error": index.max_abs_logprob_error},
            "resumed_after_sequences": start,
            "processes": self.rank.world,
            "cpu_threads": self.threads,
            **({"rehearsal": rehearsal_record(self.ctx.manifest.document)}
               if is_rehearsal(self.ctx.manifest.document) else {}),
        })

    def cleanup(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.abort()
        self.model = None

