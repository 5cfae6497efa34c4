"""Filter stage (synthetic-data SFT): keep the teacher's samples that pass the manifest's filters.

Reads ``stages/teacher/generations`` (every shard's sha256 checked); applies ``generation.filters`` in its fixed
order (length, answer, exact dedup, near dedup) and writes ``data/kept.jsonl`` (the surviving records, in order)
and ``data/dropped.jsonl`` (which filter dropped which sample, and why). Each filter's input/kept/dropped counts
go into the summary. In a rehearsal the answer check is skipped (random answers have nothing to check; the
completions' text is their token ids, so the length and dedup filters run as in a real run). Quick and
deterministic: a killed filter stage simply runs again. Tokens counted: the generated tokens of the samples
examined.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from distill_kit import rundir_layout as layout
from distill_kit._io import atomic_write_text, sha256_file
from distill_kit.generation.filters import FilterSettings, apply_filters
from distill_kit.generation.shards import read_generations
from distill_kit.rehearsal import is_rehearsal
from distill_kit.rehearsal.substitute import rehearsal_record
from distill_kit.stages.base import StageContext, StageResult

KEPT_FILE = "data/kept.jsonl"
DROPPED_FILE = "data/dropped.jsonl"


class FilterStage:
    kind = "filter"

    def setup(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.settings = FilterSettings.from_settings(ctx.manifest.settings.teacher)
        self.rehearsal = is_rehearsal(ctx.manifest.document)
        if self.rehearsal and self.settings.answer_check != "none":
            ctx.progress.log(f"filter: rehearsal: answer check '{self.settings.answer_check}' skipped (random "
                             "answers)")
            self.settings = replace(self.settings, answer_check="none")
        self.index, self.records = read_generations(ctx.output_of("teacher") / layout.GENERATIONS)

    def run(self) -> StageResult:
        outcome = apply_filters(self.records, self.settings)
        kept_path = self.ctx.stage_dir / KEPT_FILE
        atomic_write_text(kept_path, "".join(r.to_json() + "\n" for r in outcome.kept))
        atomic_write_text(self.ctx.stage_dir / DROPPED_FILE,
                          "".join(json.dumps(d, sort_keys=True) + "\n" for d in outcome.dropped))
        for count in outcome.counts:
            self.ctx.progress.log(f"filter: {count.name}: kept {count.kept} of {count.input} "
                                  f"(dropped {count.dropped}{': ' + str(count.reasons) if count.reasons else ''})")
        examined = sum(r.generated_tokens for r in self.records)
        return StageResult(tokens=examined, token_kind="examined_generated_tokens", outputs={
            "input_samples": len(self.records),
            "kept_samples": len(outcome.kept),
            "dropped_samples": len(outcome.dropped),
            "kept_generated_tokens": sum(r.generated_tokens for r in outcome.kept),
            "kept_prompts": len({r.prompt_index for r in outcome.kept}),
            "filters": [asdict(c) for c in outcome.counts],
            "kept": {"path": KEPT_FILE, "sha256": sha256_file(kept_path)},
            "dropped": {"path": DROPPED_FILE},
            "generations_shard_sha256": [s.sha256 for s in self.index.shards],
            **({"rehearsal": {**rehearsal_record(self.ctx.manifest.document),
                              "answer_check": "skipped: random answers have nothing to check"}}
               if self.rehearsal else {}),
        })

    def cleanup(self) -> None:
        self.records = []
