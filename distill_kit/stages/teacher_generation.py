"""Teacher stage (synthetic-data SFT): the teacher answers the training prompts; its samples are written in shards.

Prompts: ``data.train`` through its preprocessor (the conversation up to its last assistant turn, rendered with the
teacher's chat template, or the tiny task's own format), in dataset order, tokenized shard by shard. Decoding:
``teacher.generation`` (greedy or sampling, temperature, top_p, top_k, max_new_tokens, num_samples), each batch
under its own seed (``generation.decode.batch_seed``). Output: ``stages/teacher/generations`` (format in
``generation.shards``); a killed stage resumes after its last whole shard. Tokens counted: generated tokens (EOS
included).

A rehearsal (``rehearsal.enabled``) keeps all of that but the inputs: random weights of the teacher's shape made on
the device, the synthetic tokenizer, random prompts of the data's length distribution totalling
``rehearsal.teacher_tokens`` prompt tokens, each with a drawn answer length the decoding runs to (no EOS comes from
random weights; ``rehearsal.generation``). It always decodes with Hugging Face ``generate`` (the random model is
made in this process). Its completions' text is their token ids, for the filters' dedup to work on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_kit import rundir_layout as layout
from distill_kit._io import canonical_json_bytes
from distill_kit.assets.resolve import asset_path, tokenizer_path
from distill_kit.distributed.rank import barrier, current
from distill_kit.generation.decode import (
    DecodingSettings,
    HFBackend,
    VLLMBackend,
    batch_seed,
    choose_backend,
    vllm_available,
)
from distill_kit.generation.shards import GenerationRecord, GenerationWriter
from distill_kit.rehearsal import RehearsalSettings, is_rehearsal
from distill_kit.rehearsal.generation import RehearsalPrompt, rehearsal_prompts
from distill_kit.rehearsal.substitute import random_model, rehearsal_record, synthetic_tokenizer, train_lengths
from distill_kit.stages.base import StageContext, StageResult
from distill_kit.stages.generation_merge import RankGenerationWriter, merge_generation_parts
from distill_kit.training import preprocess
from distill_kit.training.models import load_tokenizer


def teacher_tokenizer_dir(model_dir: Path, document: dict[str, Any]) -> Path:
    """The teacher's own tokenizer (and chat template) where its folder has one, else the manifest's."""
    return model_dir if (model_dir / "tokenizer_config.json").exists() else tokenizer_path(document)


def prompts_sha256(rows: list[preprocess.Conversation]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_json_bytes([row.prompt, row.reference]) + b"\n")
    return digest.hexdigest()


def rehearsal_prompts_sha256(prompts: list[RehearsalPrompt]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(canonical_json_bytes([prompt.ids, prompt.answer_tokens, prompt.finished]) + b"\n")
    return digest.hexdigest()


@dataclass
class GeneratedBatch:
    """One decoded batch (the loop's item, timed by ``runner.timing``) and the shard it belongs to."""

    first: int  # the shard's first prompt
    records: list[GenerationRecord]
    skipped: int  # the shard's prompts with no room left for an answer
    last: bool  # the shard's last batch

    @property
    def generated_tokens(self) -> int:
        return sum(r.generated_tokens for r in self.records)


class TeacherGenerationStage:
    kind = "teacher_generation"

    def setup(self, ctx: StageContext) -> None:
        doc = ctx.manifest.document
        self.ctx = ctx
        teacher = ctx.manifest.settings.teacher
        self.decoding = DecodingSettings.from_settings(teacher.generation)
        self.batch_size = teacher.generation.batch_size
        self.max_seq_len = teacher.max_seq_len
        shard_prompts = teacher.generation.shard_prompts
        self.shard_prompts = max(self.batch_size, shard_prompts // self.batch_size * self.batch_size)
        teacher_ref = doc["models"]["teacher"]
        self.rehearsal: list[RehearsalPrompt] | None = None
        if is_rehearsal(doc):
            backend, self.backend_reason = "hf", "rehearsal: random weights made in this process"
            self._rehearse(doc, teacher.generation.backend)
        else:
            self._load(doc, asset_path(teacher_ref, doc["name"]), teacher.generation.backend)
            backend = self.backend.name
        identity = {"teacher": {k: teacher_ref.get(k) for k in ("source", "id", "revision", "sha256")},
                    "decoding": self.decoding.to_dict(), "batch_size": self.batch_size, "backend": backend,
                    "max_seq_len": self.max_seq_len, "prompts": len(self.rows),
                    "prompts_sha256": (prompts_sha256(self.rows) if self.rehearsal is None
                                       else rehearsal_prompts_sha256(self.rehearsal))}
        self.identity = identity
        self.rank = current()
        if self.rank.spread:  # this rank's block of the shards (stages/generation_merge.py)
            self.writer = RankGenerationWriter.open_part(ctx.stage_dir / layout.GENERATIONS, identity,
                                                         self.shard_prompts, len(self.rows), self.rank)
        else:
            self.writer = GenerationWriter.open(ctx.stage_dir / layout.GENERATIONS, identity, self.shard_prompts)

    def _load(self, doc: dict[str, Any], model_dir: Path, requested: str) -> None:
        self.tokenizer_dir = teacher_tokenizer_dir(model_dir, doc)
        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        train = doc["data"]["train"]
        self.rows, self.data_report = preprocess.conversations(train, asset_path(train, doc["name"]))
        self.renderer = preprocess.renderer_for(self.data_report.format, self.tokenizer)
        backend, self.backend_reason = choose_backend(requested, self.ctx.device)
        eos = int(self.tokenizer.eos_token_id)
        self.backend = (VLLMBackend(model_dir, self.tokenizer_dir, eos, self.max_seq_len) if backend == "vllm"
                        else HFBackend(model_dir, self.ctx.device, int(self.tokenizer.pad_token_id), eos))

    def _rehearse(self, doc: dict[str, Any], requested: str) -> None:
        """Random weights of the teacher's shape on the device; random prompts with drawn answer lengths."""
        settings = RehearsalSettings.from_document(doc)
        self.tokenizer, self.tokenizer_dir = synthetic_tokenizer(doc, self.ctx.stage_dir / "rehearsal_tokenizer")
        pad, eos = int(self.tokenizer.pad_token_id), int(self.tokenizer.eos_token_id)
        model = random_model(doc["models"]["teacher"], doc["name"], self.ctx.device, "auto", settings.seed,
                             settings.stand_in_teacher)
        self.backend = HFBackend(None, self.ctx.device, pad, eos, model=model)
        if requested == "vllm" or (requested == "auto" and self.ctx.device == "cuda" and vllm_available()):
            self.backend_reason += " (a real run would take vllm: this rehearsal times Hugging Face generate)"
        train = doc["data"]["train"]
        self.rehearsal = rehearsal_prompts(train_lengths(doc, self.max_seq_len), self.tokenizer.vocab_size,
                                           self.max_seq_len, self.decoding.max_new_tokens,
                                           settings.teacher_tokens, settings.seed, (pad, eos))
        self.rows = [preprocess.Conversation([{"role": "user", "content": f"rehearsal prompt {i}"},
                                              {"role": "assistant", "content": ""}], i, f"rehearsal-{i}")
                     for i in range(len(self.rehearsal))]
        self.data_report = preprocess.PreprocessReport(
            format=train.get("format", "chat"), dataset=f"rehearsal: random prompts of {train['id']}'s lengths",
            revision=train.get("revision"), split=train.get("split"), subset=train.get("subset"),
            rows_read=len(self.rows), rows_kept=len(self.rows), examples=len(self.rows),
            tokens=sum(len(p.ids) for p in self.rehearsal))
        self.ctx.progress.log(f"teacher: rehearsal, random {type(model).__name__} weights, {len(self.rows)} random "
                              f"prompts ({self.data_report.tokens:,} prompt tokens), answers of drawn lengths")

    def _ids(self, index: int) -> list[int]:
        if self.rehearsal is not None:
            return self.rehearsal[index].ids
        try:
            return self.renderer.prompt_ids(self.rows[index])
        except ValueError:
            return []

    def _prompt_ids(self, first: int) -> tuple[list[tuple[int, list[int]]], int]:
        """``(row index, token ids)`` of one shard's prompts, and how many had no room left for an answer."""
        out, skipped = [], 0
        for index in range(first, min(first + self.shard_prompts, len(self.rows))):
            ids = self._ids(index)
            if not ids or len(ids) >= self.max_seq_len:
                skipped += 1
                continue
            out.append((index, ids))
        return out, skipped

    def _record(self, index: int, ids: list[int], j: int, sample) -> GenerationRecord:
        row = self.rows[index]
        completion = (" ".join(map(str, sample.ids)) if self.rehearsal is not None  # no text: the ids stand in
                      else self.tokenizer.decode(sample.ids, skip_special_tokens=True))
        return GenerationRecord(prompt_index=index, sample=j, messages=row.prompt, reference=row.reference,
                                prompt_tokens=len(ids), completion=completion,
                                completion_ids=sample.ids, generated_tokens=sample.generated_tokens,
                                finish_reason="stop" if sample.stopped else "length", id=row.id)

    @property
    def _step(self) -> int:
        return 0 if self.backend.name == "vllm" else self.batch_size  # 0: vLLM batches a whole shard itself

    def _generate(self, batch: list[tuple[int, list[int]]]) -> list[GenerationRecord]:
        seed = batch_seed(self.decoding.seed, batch[0][0])
        prompts = [ids for _, ids in batch]
        if self.rehearsal is None:
            outputs = self.backend.generate(prompts, self.decoding, seed, self.max_seq_len)
        else:
            answers = [(self.rehearsal[i].answer_tokens, self.rehearsal[i].finished) for i, _ in batch]
            outputs = self.backend.generate(prompts, self.decoding, seed, self.max_seq_len, answers=answers)
        records = []
        for (index, ids), samples in zip(batch, outputs, strict=True):
            records.extend(self._record(index, ids, j, sample) for j, sample in enumerate(samples))
        return records

    def _batches(self, firsts: Iterable[int]) -> Iterator[GeneratedBatch]:
        for first in firsts:
            prompts, skipped = self._prompt_ids(first)
            step = self._step or max(1, len(prompts))
            starts = list(range(0, len(prompts), step)) or [0]  # a shard of skipped prompts is written too
            for k, start in enumerate(starts):
                batch = prompts[start : start + step]
                yield GeneratedBatch(first, self._generate(batch) if batch else [], skipped, k == len(starts) - 1)

    def _batch_count(self, firsts: Iterable[int]) -> int:
        """Batches the loop will run (a shard's skipped prompts aside), for its progress bar."""
        sizes = [min(self.shard_prompts, len(self.rows) - first) for first in firsts]
        return sum(max(1, -(-size // self._step)) if self._step else 1 for size in sizes)

    def run(self) -> StageResult:
        start = self.writer.prompts_done
        if start:
            self.ctx.progress.log(f"teacher: resuming after {start} prompts already in finished shards")
        firsts = list(getattr(self.writer, "firsts", range(start, len(self.rows), self.shard_prompts)))
        shard: list[GenerationRecord] = []
        for batch in self.ctx.progress.track(self._batches(firsts), self._batch_count(firsts), "teacher: generating"):
            shard.extend(batch.records)
            if batch.last:
                self.writer.write_shard(batch.first, min(self.shard_prompts, len(self.rows) - batch.first), shard,
                                        batch.skipped)
                shard = []
        index = self.writer.close()
        if self.rank.spread:
            barrier()  # every rank's part is closed
            if not self.rank.main:
                return StageResult(tokens=0, token_kind="generated_tokens")
            index = merge_generation_parts(self.ctx.stage_dir / "generations", self.rank.world, len(self.rows))
        totals = index.totals()
        return StageResult(tokens=totals["generated_tokens"], token_kind="generated_tokens", outputs={
            "generations": {"path": layout.GENERATIONS, "shards": len(index.shards), "bytes": totals["bytes"],
                            "shard_sha256": [s.sha256 for s in index.shards]},
            "prompts": len(self.rows), "prompts_skipped_no_room": totals["skipped_prompts"],
            "prompts_sha256": self.identity["prompts_sha256"], "samples": totals["records"],
            "prompt_tokens": totals["prompt_tokens"], "generated_tokens": totals["generated_tokens"],
            "unfinished_samples": totals["unfinished"], "decoding": self.decoding.to_dict(),
            "batch_size": self.batch_size, "shard_prompts": self.shard_prompts,
            "backend": {"name": self.backend.name, "why": self.backend_reason,
                        "cpu_threads": getattr(self.backend, "threads", None)},
            "data": self.data_report.to_dict(), "resumed_after_prompts": start,
            "discarded_shards": self.writer.discarded, "processes": self.rank.world,
            **({"rehearsal": {**rehearsal_record(self.ctx.manifest.document),
                              "answers": "lengths drawn from the data's answer share, cut at max_new_tokens; each "
                              "batch decodes as long as its longest"}} if self.rehearsal is not None else {}),
        })

    def cleanup(self) -> None:
        self.backend = None
