"""A model given as a checkpoint file: a ``.safetensors`` or ``.pt`` state dict plus an architecture.

    models:
      student: {source: local, id: ckpt/step_500.pt, architecture: {source: builtin, id: tiny-student}}

The architecture is any model reference whose folder holds a ``config.json`` (a local HF config folder, a builtin
model, a fetched hub model); its tokenizer and generation files come along. The pair is converted once, before any
stage runs, into an ordinary model folder in the asset cache, ``<cache>/converted/<file sha256>-<config sha256>/``,
whose ``CONVERTED.json`` records both digests: the checkpoint file's and the converted folder's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from distill_kit._io import atomic_write_json, save_model_folder, sha256_file
from distill_kit.assets.resolve import CheckpointInvalid, architecture_dir, converted_dir, is_checkpoint
from distill_kit.errors import AssetMismatch

__all__ = ["CheckpointInvalid", "conversion_record", "convert_checkpoint", "converted_dir", "folder_sha256",
           "is_checkpoint"]

RECORD = "CONVERTED.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SKIPPED = {RECORD, ".complete", "ASSET.json", "model.safetensors.index.json"}


def folder_sha256(folder: Path) -> str:
    """One digest of a folder: sha256 over its files' sorted ``name sha256`` lines (the record excluded)."""
    lines = [f"{p.relative_to(folder).as_posix()} {sha256_file(p)}\n" for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name not in (RECORD, ".complete")]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one message
        raise CheckpointInvalid(f"checkpoint '{path}' cannot be read as a state dict: {type(err).__name__}: "
                                f"{err}") from err
    for key in ("state_dict", "model"):  # trainer checkpoints often wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointInvalid(f"checkpoint '{path}' is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _build(state: dict[str, Any], arch_dir: Path, path: Path) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill_kit.training.models import set_offline

    set_offline()
    config = AutoConfig.from_pretrained(str(arch_dir), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:
        raise CheckpointInvalid(f"checkpoint '{path}' does not fit the architecture of {arch_dir}: "
                                f"{str(err).splitlines()[-1].strip()}") from err
    model.tie_weights()
    missing = [k for k, v in model.state_dict().items() if v.is_meta]
    if missing or result.unexpected_keys:
        parts = ([f"missing {len(missing)} tensor(s) ({', '.join(missing[:3])})"] if missing else []) + \
            ([f"{len(result.unexpected_keys)} unexpected ({', '.join(result.unexpected_keys[:3])})"]
             if result.unexpected_keys else [])
        raise CheckpointInvalid(f"checkpoint '{path}' does not fit the architecture of {arch_dir}: "
                                f"{'; '.join(parts)}")
    return model


def convert_checkpoint(ref: dict[str, Any], manifest_name: str) -> Path:
    """The converted model folder of a checkpoint reference, made (atomically) when it is not in the cache."""
    target = converted_dir(ref, manifest_name)
    if (target / ".complete").exists():
        return target
    path, arch_dir = Path(ref["id"]), architecture_dir(ref, manifest_name)
    model = _build(_state_dict(path), arch_dir, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    try:
        save_model_folder(model, staging)
        for item in arch_dir.iterdir():  # tokenizer, generation settings: the folder is usable on its own
            if item.is_file() and item.name not in SKIPPED and not item.name.endswith(WEIGHT_SUFFIXES) \
                    and not (staging / item.name).exists():
                shutil.copy2(item, staging / item.name)
        atomic_write_json(staging / RECORD, {
            "checkpoint": str(path.resolve()), "checkpoint_sha256": sha256_file(path),
            "architecture": ref["architecture"], "config_sha256": sha256_file(arch_dir / "config.json"),
            "folder_sha256": folder_sha256(staging),
            "weights_sha256": sha256_file(staging / "model.safetensors")})
        (staging / ".complete").write_text("ok\n")
        os.replace(staging, target)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if (target / ".complete").exists():  # converted meanwhile by another run
            return target
        raise AssetMismatch(f"could not write the converted checkpoint to {target}: {err}") from err
    return target


def conversion_record(folder: Path) -> dict[str, Any] | None:
    """The ``CONVERTED.json`` of a converted folder (both digests), or None."""
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
