"""Reusing a stage's calibration between estimates: ``distill-kit estimate MANIFEST --reuse EARLIER.json``.

The real manifests share whole stages: kd_32b_1b, kd_32b_7b and kd_32b_13b cache the same teacher's logits over the
same data; the three sft_32b_* generate the same answers; sft_32b_7b and baseline_sft_7b evaluate the same 7B shape
on the same tasks. Rehearsing such a stage again measures the same thing (a 32B teacher's 6 generation batches are
over 3 minutes of a 30-minute GPU session). So each calibration carries a **fingerprint**: the sha256 of what decides
its cost (``STAGE_INPUTS``: the parts of the calibration's resolved manifest the stage reads, the evaluated models'
shapes) and of the machine it ran on (GPU names, UUIDs and driver, CPU, the kit's version and commit, torch). A stage
whose fingerprint matches one in an earlier estimate's JSON takes that calibration, marked ``reused_from``; the
rehearsal then runs a one-layer stand-in teacher (its outputs have the real format and sizes, for the stages after
it) or stops before a reused evaluation. Everything else is measured anew.

What a match proves: the same stage settings, data shape, caps and model shapes, on the same physical GPUs with the
same driver, kit version and commit (uncommitted changes in the tree are not seen). It does not prove the same
conditions (another lease of the same machine ran the same student 14% slower: README, issue 17), which is why the
UUIDs are in it: a calibration is not reused across machines.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from distill_kit.errors import InvalidInput
from distill_kit.manifest.pipelines import dotted_get

# Dotted paths in the calibration's resolved manifest that decide a stage's cost; anything else may differ.
_TEACHER = ("models.teacher", "models.tokenizer", "teacher", "data.train", "seed", "rehearsal.teacher_tokens",
            "distributed", "hardware.gpu_count", "energy.sample_interval_ms")
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "teacher_logits": _TEACHER,
    "teacher_generation": _TEACHER,
    "eval": ("eval", "models.tokenizer", "student.max_seq_len", "data.train", "seed", "rehearsal.eval_tokens",
             "hardware.gpu_count", "energy.sample_interval_ms"),
}
# which model reference each evaluated model's shape comes from
_EVAL_MODEL_REF = {"student_initial": "student", "student": "student", "teacher": "teacher"}


def machine_identity() -> dict[str, Any]:
    """This machine as far as a calibration's cost depends on it (from the run fingerprint's collector)."""
    from distill_kit.fingerprint import collect_fingerprint

    fingerprint = collect_fingerprint(runtime="local")
    torch = fingerprint["torch"]
    return {"gpus": [[g["name"], g["uuid"], g["driver"]] for g in fingerprint["gpus"]],
            "cpu": [fingerprint["cpu"]["model"], fingerprint["cpu"]["logical_cores"]],
            "kit": [fingerprint["kit"]["version"], fingerprint["kit"].get("git_commit")],
            "torch": [torch.get("version"), torch.get("cuda")]}


def stage_inputs(document: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """What decides the cost of a stage of ``kind`` in the calibration's resolved manifest (None: never reused)."""
    paths = STAGE_INPUTS.get(kind)
    if paths is None:
        return None
    inputs: dict[str, Any] = {"kind": kind, **{path: dotted_get(document, path) for path in paths}}
    if kind == "eval":
        models = document.get("models") or {}
        inputs["eval_model_shapes"] = [[name, models.get(_EVAL_MODEL_REF.get(name, name))]
                                       for name in (document.get("eval") or {}).get("models") or []]
    return inputs


def fingerprint(inputs: dict[str, Any], machine: dict[str, Any]) -> str:
    canonical = json.dumps({"inputs": inputs, "machine": machine}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_reusable(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """fingerprint -> calibration (a ``StageCalibration.to_dict``, with ``reused_from``) from earlier estimates'
    JSON files; a file that is not an estimate is refused (exit 2)."""
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            document = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InvalidInput(f"--reuse {path}: not a readable estimate JSON ({err})") from err
        calibrations = document.get("calibration") if isinstance(document, dict) else None
        if not isinstance(calibrations, list) or not isinstance(document.get("name"), str):
            raise InvalidInput(f"--reuse {path}: not the JSON of distill-kit estimate (no name or calibration list)")
        measured = (document.get("measured") or {}).get("date")
        for entry in calibrations:
            if isinstance(entry, dict) and isinstance(entry.get("fingerprint"), str):
                source = entry.get("reused_from") or {"estimate": document["name"], "file": str(path),
                                                      "measured": measured}
                found.setdefault(entry["fingerprint"], {**entry, "reused_from": source})
    return found
