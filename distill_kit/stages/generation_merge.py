"""A spread teacher's generations: the prompts' fixed shards (``shard_prompts`` each) split in contiguous blocks
across ranks; each rank writes its shards under their global numbers and its own part index
(``generations/rank-NNNNN.json``); rank 0 merges the parts into the ``index.json`` a one-process run writes.

Each batch is decoded under the seed of its first prompt (``generation.decode.batch_seed``) and batches never
straddle shards, so a shard's samples do not depend on which rank made it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distill_kit._io import sha256_file
from distill_kit.distributed.rank import RankInfo
from distill_kit.distributed.sharding import block_of, check_tiling
from distill_kit.generation.shards import (
    INDEX_FILE,
    GenerationIndex,
    GenerationRecord,
    GenerationShard,
    write_shard_file,
)
from distill_kit.stages.cache_merge import part_name


class RankGenerationWriter:
    """Writes this rank's block of shards; never touches another rank's files."""

    def __init__(self, folder: Path, part: GenerationIndex, rank: int, firsts: list[int]):
        self.folder = folder
        self.index = part
        self.rank = rank
        self.firsts = firsts  # the first prompts of the shards this rank still has to write
        self.discarded: list[str] = []

    @classmethod
    def open_part(cls, folder: Path, identity: dict[str, Any], shard_prompts: int, prompts: int, info: RankInfo
                  ) -> RankGenerationWriter:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        part = GenerationIndex(identity=identity, shard_prompts=shard_prompts)
        if (folder / part_name(info.rank)).exists():
            existing = GenerationIndex.load(folder, part_name(info.rank))
            if existing.identity == identity and existing.shard_prompts == shard_prompts and all(
                    (folder / s.file).exists() and sha256_file(folder / s.file) == s.sha256 for s in existing.shards):
                part = dataclasses.replace(existing, complete=False)
        done = {s.first_prompt for s in part.shards}
        mine = block_of(list(range(0, prompts, shard_prompts)), info.rank, info.world)
        return cls(folder, part, info.rank, [f for f in mine if f not in done])

    @property
    def prompts_done(self) -> int:
        return sum(s.prompts for s in self.index.shards)

    def write_shard(self, first_prompt: int, prompts: int, records: list[GenerationRecord], skipped: int = 0
                    ) -> GenerationShard:
        shard = write_shard_file(self.folder, f"shard-{first_prompt // self.index.shard_prompts:05d}.jsonl",
                                 first_prompt, prompts, records, skipped)
        self.index.shards.append(shard)
        self.index.save(self.folder, part_name(self.rank))
        return shard

    def close(self) -> GenerationIndex:
        self.index.complete = True
        self.index.save(self.folder, part_name(self.rank))
        return self.index


def merge_generation_parts(folder: Path, world: int, prompts: int) -> GenerationIndex:
    """Rank 0, once every rank closed its part: the one index, shards in prompt order, checked to tile the
    prompts; shard files no part lists (a discarded earlier attempt's) are removed."""
    parts = [GenerationIndex.load(folder, part_name(rank)) for rank in range(world)]
    if not all(p.complete for p in parts):
        raise RuntimeError("generation parts of some ranks are incomplete: their ranks did not finish")
    shards = sorted((s for p in parts for s in p.shards), key=lambda s: s.first_prompt)
    check_tiling([(s.file, s.first_prompt, s.prompts) for s in shards], prompts, "generation", "prompt")
    merged = dataclasses.replace(parts[0], shards=shards, complete=True)
    merged.save(folder, INDEX_FILE)
    listed = {s.file for s in shards}
    for stale in folder.glob("shard-*.jsonl"):
        if stale.name not in listed:
            stale.unlink()
    for rank in range(world):
        (folder / part_name(rank)).unlink()
    return merged
