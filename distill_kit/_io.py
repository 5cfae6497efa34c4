"""Small I/O helpers every module shares: atomic writes, hashing, canonical JSON.

Every file the kit writes goes through ``atomic_write_*`` (DESIGN.md conventions): a temporary file in the same
folder, fsync, then ``os.replace``, so a crash never leaves a half-written file where a good one stood.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from distill_kit.errors import OutputNotWritable

HASH_CHUNK_BYTES = 1 << 20


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status; elsewhere set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - no /proc: the classic set-and-restore
    os.umask(mask)
    return mask  # pragma: no cover


def file_mode(mode: int = 0o666) -> int:
    """``mode`` narrowed by the umask: what ``open()`` would give a new file (private keys use 0600 instead)."""
    return mode & ~current_umask()


def _cannot_write(path: Path, err: OSError) -> OutputNotWritable:
    if isinstance(err, IsADirectoryError) or path.is_dir():
        return OutputNotWritable(f"cannot write {path}: it is a directory, not a file name")
    if isinstance(err, FileExistsError | NotADirectoryError):
        return OutputNotWritable(f"cannot write {path}: a file stands where a folder of that path should be")
    return OutputNotWritable(f"cannot write {path}: the folder {path.parent} takes no new file "
                             f"({err.strerror or err})")


def ensure_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) if needed; a location that cannot hold it is ``OutputNotWritable``."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = "a file is in the way" if isinstance(err, FileExistsError | NotADirectoryError) else (
            err.strerror or str(err))
        raise OutputNotWritable(f"cannot create the folder {folder}: {where}") from err


def check_writable(path: Path) -> None:
    """Fail early, before long work, when ``path`` clearly cannot be written (a directory in the way, or the
    nearest existing folder above it not a writable folder). Writing may still fail later; that is reported too."""
    path = Path(path)
    if path.is_dir():
        raise OutputNotWritable(f"cannot write {path}: it is a directory, not a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputNotWritable(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"cannot write {path}: the folder {folder} is not writable")


def refuse_overwriting_inputs(outputs: list[Path], inputs: list[Path]) -> None:
    """An output that would replace one of the files being read (``OUT`` given as ``IN``'s folder) is refused."""
    read = {Path(p).resolve() for p in inputs}
    for output in outputs:
        if Path(output).resolve() in read:
            raise OutputNotWritable(f"cannot write {output}: it is one of the input files (choose another folder)")


@contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it over ``path``.

    The file gets the mode a plain ``open()`` would give it (0666 narrowed by the umask). A location that cannot
    take the file (missing folder that cannot be made, a directory in the way, no permission) raises
    ``OutputNotWritable`` naming ``path``; errors of the caller's own writing propagate unchanged.
    """
    path = Path(path)
    ensure_folder(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _cannot_write(path, err) from err
    try:
        with os.fdopen(fd, mode) as handle:
            os.fchmod(handle.fileno(), file_mode())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(tmp_name, path)
        except OSError as err:
            raise _cannot_write(path, err) from err
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def fsync_folder(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable (the folder's entry table reaches the disk)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, document: Any) -> None:
    """Human-readable JSON (sorted keys, 2-space indent, trailing newline), written atomically."""
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def canonical_json_bytes(document: Any) -> bytes:
    """The one canonical serialisation hashed for identities (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(handle: IO[bytes]) -> tuple[str, int]:
    """Hash a stream in fixed-size chunks (bounded memory whatever its size); returns (hex digest, bytes read)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return sha256_stream(handle)[0]


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_model_folder(model: Any, folder: Path | str, state_dict: dict[str, Any] | None = None) -> None:
    """``model.save_pretrained`` as one ``model.safetensors`` (rundir_layout.WEIGHTS), never sharded: transformers
    splits a model above 50 GB into ``model-0000N-of-...`` files (a 13B student's fp32 final save is 55 GB: the
    H200 rehearsal of baseline_sft_13b failed on it), and the run directory's outputs, verify's weights sha256 and
    ``reproduce`` name one file. The shard limit is set above the weights' own size."""
    tensors = list(state_dict.values()) if state_dict is not None else [*model.parameters(), *model.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    model.save_pretrained(str(folder), state_dict=state_dict, safe_serialization=True,
                          max_shard_size=max(2 * size, 1 << 30))
