"""A spread teacher's logit cache: each rank writes its planned shards and its own part index
(``cache/rank-NNNNN.json``); rank 0 merges the parts into the one ``index.json`` a one-process run writes.

Shard files carry their global number, so the merged cache holds, byte for byte, the files and the index of a
one-process run on the same data (sharding.py says why the shard contents are the same).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from distill_kit._io import sha256_file
from distill_kit.distributed.rank import RankInfo
from distill_kit.distributed.sharding import PlannedShard, block_of, check_tiling, plan_cache_shards
from distill_kit.logits.cache import INDEX_FILE, CacheIndex, CacheWriter


def part_name(rank: int) -> str:
    return f"rank-{rank:05d}.json"


_SETTINGS = ("top_k", "temperature", "vocab_size", "encoding", "value_bytes", "version")


class RankCacheWriter(CacheWriter):
    """A cache writer for one rank's block of planned shards; it never touches another rank's files."""

    def __init__(self, folder: Path, index: CacheIndex, shard_tokens: int, rank: int, next_shard: PlannedShard | None,
                 end_sequence: int):
        super().__init__(folder, index, shard_tokens)
        self.index_file = part_name(rank)
        if next_shard is not None:
            self._next_shard, self._next_sequence = next_shard.number, next_shard.first_sequence
        self.end_sequence = end_sequence

    @property
    def sequences_done(self) -> int:
        """The first sequence this rank still has to cache (absolute position in the data)."""
        return self._next_sequence if self._next_sequence < self.end_sequence else self.end_sequence

    @classmethod
    def open_part(cls, folder: Path, index: CacheIndex, shard_tokens: int, lengths: list[int], info: RankInfo
                  ) -> RankCacheWriter:
        """This rank's writer, continuing its part if one with the same settings and intact shards exists."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        mine = block_of(plan_cache_shards(lengths, shard_tokens), info.rank, info.world)
        end = mine[-1].end_sequence if mine else 0
        part = dataclasses.replace(index, shards=[])
        if (folder / part_name(info.rank)).exists():
            existing = CacheIndex.load(folder, part_name(info.rank))
            if all(getattr(existing, f) == getattr(index, f) for f in _SETTINGS) and all(
                    sha256_file(folder / s.file) == s.sha256 for s in existing.shards):
                part = dataclasses.replace(existing, complete=False)
        done = {s.file for s in part.shards}
        remaining = [s for s in mine if f"shard-{s.number:05d}.safetensors" not in done]
        return cls(folder, part, shard_tokens, info.rank, remaining[0] if remaining else None,
                   end if remaining else 0)


def merge_parts(folder: Path, world: int, sequences: int) -> CacheIndex:
    """Rank 0, once every rank has closed its part: the one index, shards in order, checked to tile the data."""
    parts = [CacheIndex.load(folder, part_name(rank)) for rank in range(world)]
    incomplete = [rank for rank, part in enumerate(parts) if not part.complete]
    if incomplete:
        raise RuntimeError(f"logit cache parts of ranks {incomplete} are incomplete: their ranks did not finish")
    shards = sorted((s for part in parts for s in part.shards), key=lambda s: s.file)
    check_tiling([(s.file, s.first_sequence, s.sequences) for s in shards], sequences, "logit cache", "sequence")
    merged = dataclasses.replace(parts[0], shards=shards, complete=True,
                                 max_abs_logprob_error=max(p.max_abs_logprob_error for p in parts))
    merged.save(folder, INDEX_FILE)
    for rank in range(world):
        (folder / part_name(rank)).unlink()
    return merged
