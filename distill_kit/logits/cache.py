"""On-disk format of the teacher-logit cache (version 1), its writer and its reader.

    cache/index.json                  CacheIndex: settings, shards with sha256, totals, complete flag
    cache/shard-00000.safetensors     tensors of a run of whole sequences:
        tokens        int32 [T]        the sequences' token ids, concatenated
        offsets       int64 [N+1]      sequence i is tokens[offsets[i]:offsets[i+1]]
        loss_mask     uint8 [T]        1 where the token is a training target (completion, EOS)
        topk_indices  uint16|int32 [P, k]  P = T - N prediction rows: row r of sequence i predicts its token r+1
        topk_logprobs float16 [P, k]   teacher log-probs at temperature T, sorted descending
        tail_logmass  float16 [P]      log of the probability mass outside the top-k (log1p(-sum p_topk))

Shards are written whole by a background thread (the teacher's forward pass never waits on the disk) and
atomically; a finished shard is never rewritten, so a killed teacher stage resumes after the last one.
safetensors is used because it is a well-kept, memory-mappable, language-neutral tensor container.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill_kit._io import atomic_write_json, read_json, sha256_file

FORMAT = "distill-kit-logit-cache"
VERSION = 1
INDEX_FILE = "index.json"


@dataclass
class ShardInfo:
    file: str
    sha256: str
    bytes: int
    sequences: int
    tokens: int
    first_sequence: int


@dataclass
class CacheIndex:
    top_k: int
    temperature: float
    vocab_size: int
    index_dtype: str
    value_dtype: str = "float16"
    format: str = FORMAT
    version: int = VERSION
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    teacher: dict[str, Any] = field(default_factory=dict)

    @property
    def sequences(self) -> int:
        return sum(s.sequences for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(sequences=self.sequences, tokens=self.tokens, bytes=self.bytes,
                    bytes_per_token=self.bytes / self.tokens if self.tokens else None)
        return data

    @classmethod
    def load(cls, folder: Path) -> CacheIndex:
        data = read_json(folder / INDEX_FILE)
        for derived in ("sequences", "tokens", "bytes", "bytes_per_token"):
            data.pop(derived, None)
        shards = [ShardInfo(**s) for s in data.pop("shards")]
        return cls(**data, shards=shards)

    def save(self, folder: Path) -> None:
        atomic_write_json(folder / INDEX_FILE, self.to_dict())


def index_dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"


@dataclass
class SequenceLogits:
    """One sequence's teacher output, ready to store."""

    tokens: np.ndarray  # int [n]
    loss_mask: np.ndarray  # uint8 [n]
    topk_indices: np.ndarray  # [n-1, k]
    topk_logprobs: np.ndarray  # float [n-1, k]
    tail_logmass: np.ndarray  # float [n-1]


class CacheWriter:
    """Accumulates sequences and writes whole shards from a background thread.

    ``resume()`` keeps the shards already written (checking their sha256) and tells the caller how many
    sequences to skip.
    """

    def __init__(self, folder: Path, index: CacheIndex, shard_tokens: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = index
        self.shard_tokens = shard_tokens
        self._pending: list[SequenceLogits] = []
        self._pending_tokens = 0
        self._queue: queue.Queue[tuple[int, int, list[SequenceLogits]] | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="logit-cache-writer", daemon=True)
        self._thread.start()
        self._next_sequence = index.sequences
        self._next_shard = len(index.shards)

    @classmethod
    def open(cls, folder: Path, index: CacheIndex, shard_tokens: int) -> CacheWriter:
        """A writer continuing the cache in ``folder`` if its settings match, else starting it afresh."""
        folder = Path(folder)
        if (folder / INDEX_FILE).exists():
            existing = CacheIndex.load(folder)
            same = (existing.top_k, existing.temperature, existing.vocab_size) == (
                index.top_k, index.temperature, index.vocab_size)
            if same and all(sha256_file(folder / s.file) == s.sha256 for s in existing.shards):
                existing.complete = False
                return cls(folder, existing, shard_tokens)
        for stale in folder.glob("shard-*.safetensors"):
            stale.unlink()
        return cls(folder, index, shard_tokens)

    @property
    def sequences_done(self) -> int:
        """Sequences already safely in finished shards (a resumed teacher starts after them)."""
        return self.index.sequences

    def add(self, sequence: SequenceLogits) -> None:
        if self._error is not None:
            raise RuntimeError("logit cache writer failed") from self._error
        self._pending.append(sequence)
        self._pending_tokens += len(sequence.tokens)
        if self._pending_tokens >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        self._queue.put((self._next_shard, self._next_sequence, self._pending))
        self._next_shard += 1
        self._next_sequence += len(self._pending)
        self._pending, self._pending_tokens = [], 0

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._write_shard(*item)
            except BaseException as err:  # surfaced to the producer on its next add()/close()
                self._error = err
                return

    def _write_shard(self, number: int, first_sequence: int, sequences: list[SequenceLogits]) -> None:
        from safetensors.numpy import save

        lengths = np.array([len(s.tokens) for s in sequences], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        tensors = {
            "tokens": np.concatenate([s.tokens for s in sequences]).astype(np.int32),
            "offsets": offsets.astype(np.int64),
            "loss_mask": np.concatenate([s.loss_mask for s in sequences]).astype(np.uint8),
            "topk_indices": np.concatenate([s.topk_indices for s in sequences]).astype(self.index.index_dtype),
            "topk_logprobs": np.concatenate([s.topk_logprobs for s in sequences]).astype(np.float16),
            "tail_logmass": np.concatenate([s.tail_logmass for s in sequences]).astype(np.float16),
        }
        name = f"shard-{number:05d}.safetensors"
        from distill_kit._io import atomic_write_bytes

        atomic_write_bytes(self.folder / name, save(tensors, metadata={"format": FORMAT, "version": str(VERSION)}))
        info = ShardInfo(file=name, sha256=sha256_file(self.folder / name), bytes=(self.folder / name).stat().st_size,
                         sequences=len(sequences), tokens=int(lengths.sum()), first_sequence=first_sequence)
        self.index.shards.append(info)
        self.index.save(self.folder)  # the index only ever lists shards that are whole on disk

    def close(self) -> CacheIndex:
        """Write what is pending, wait for the writer, mark the cache complete."""
        self._flush()
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError("logit cache writer failed") from self._error
        self.index.complete = True
        self.index.save(self.folder)
        return self.index

    def abort(self) -> None:
        """Stop the writer after the shards already queued (used when the producer fails)."""
        self._queue.put(None)
        self._thread.join(timeout=60)


class CacheReader:
    """Reads a complete cache, sequence by sequence, memory-mapped shard by shard."""

    def __init__(self, folder: Path, verify: bool = True):
        self.folder = Path(folder)
        self.index = CacheIndex.load(self.folder)
        if not self.index.complete:
            raise ValueError(f"logit cache in {folder} is incomplete (its teacher stage did not finish)")
        if verify:
            for shard in self.index.shards:
                actual = sha256_file(self.folder / shard.file)
                if actual != shard.sha256:
                    raise ValueError(f"logit cache shard {shard.file} is corrupt (sha256 {actual[:12]}…, "
                                     f"index says {shard.sha256[:12]}…)")

    def __len__(self) -> int:
        return self.index.sequences

    def shard_arrays(self, shard: ShardInfo) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        with safe_open(str(self.folder / shard.file), framework="np") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118

    def sequences(self):  # -> Iterator[SequenceLogits]
        for shard in self.index.shards:
            arrays = self.shard_arrays(shard)
            offsets = arrays["offsets"]
            for i in range(len(offsets) - 1):
                start, end = int(offsets[i]), int(offsets[i + 1])
                rows = slice(start - i, end - i - 1)
                yield SequenceLogits(arrays["tokens"][start:end], arrays["loss_mask"][start:end],
                                     arrays["topk_indices"][rows], arrays["topk_logprobs"][rows],
                                     arrays["tail_logmass"][rows])
