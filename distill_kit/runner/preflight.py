"""The preflight: whether a run can start, decided before any stage runs (and by ``run --dry-run``).

(1) assets: every model and dataset the selected stages read is in the local cache at its pinned revision (a
checkpoint file is converted here, before the first stage); (2) accelerator: ``hardware.accelerator``,
``gpu_count``, ``gpu_models`` and ``min_gpu_memory_gib`` against the GPUs this process sees; (3) judges: a judged
task has a judge, and a judge endpoint answers; (4) disk: room in the run directory's file system for what the
stages will write (logit cache, checkpoints), estimated from the manifest. Each finding says what to do.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_kit.errors import DistillKitError, InvalidInput
from distill_kit.manifest import ResolvedManifest
from distill_kit.manifest.settings import Settings

GIB = 1 << 30
LOGIT_BYTES_PER_ENTRY = 2.5  # the cache codec: about 250 B per token at top_k 100 (distill_kit/logits/codec.py)
BYTES_PER_TEXT_TOKEN = 4  # a dataset's bytes over its tokens, roughly, for English text
DISK_MARGIN = 1.1


@dataclass(frozen=True)
class Finding:
    check: str  # assets | accelerator | judges | disk
    ok: bool
    message: str


class PreflightFailed(InvalidInput):
    """The run cannot start here as it stands (exit 2): each problem with what to do."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        bad = [f for f in findings if not f.ok]
        lines = "\n".join(f"  - {f.check}: {f.message}" for f in bad)
        super().__init__(f"the run cannot start ({len(bad)} preflight problem(s)); nothing was run:\n{lines}")


# -- (1) assets ------------------------------------------------------------------------------------------------
def _stage_refs(doc: dict[str, Any], stages: list[str]) -> list[tuple[str, dict[str, Any]]]:
    models, data = doc.get("models") or {}, doc.get("data") or {}
    wanted: list[tuple[str, Any]] = []
    if {"teacher", "filter", "student", "eval"} & set(stages):
        wanted.append(("models.tokenizer", models.get("tokenizer")))
    if "teacher" in stages:
        wanted += [("models.teacher", models.get("teacher")), ("data.train", data.get("train"))]
    if "student" in stages:
        wanted += [("models.student", models.get("student")), ("data.train", data.get("train"))]
    if "eval" in stages:
        settings = doc.get("eval") or {}
        for model in settings.get("models", ["student"]):
            if model == "teacher":
                wanted.append(("models.teacher", models.get("teacher")))
            elif model == "student_initial" or doc.get("pipeline") == "eval_only":
                wanted.append(("models.student", models.get("student")))
        wanted.append(("data.eval", data.get("eval")))
        judge = settings.get("judge") or {}
        if judge.get("type") == "hf":
            wanted += [("eval.judge.model", judge.get("model")), ("eval.judge.tokenizer", judge.get("tokenizer"))]
    seen, refs = set(), []
    for label, ref in wanted:
        key = label if not isinstance(ref, dict) else (ref.get("source"), ref.get("id"), ref.get("revision"))
        if isinstance(ref, dict) and key not in seen:
            seen.add(key)
            refs.append((label, ref))
    return refs


def _asset(label: str, ref: dict[str, Any], manifest: str, convert: bool) -> Finding:
    from distill_kit.assets.resolve import asset_path
    from distill_kit.training.checkpoint_file import convert_checkpoint, converted_dir, is_checkpoint

    try:
        if is_checkpoint(ref):
            folder = convert_checkpoint(ref, manifest) if convert else converted_dir(ref, manifest)
            state = "converted" if (folder / ".complete").exists() else "to be converted before the first stage"
            return Finding("assets", True, f"{label}: checkpoint {ref['id']} ({state}: {folder})")
        return Finding("assets", True, f"{label}: {asset_path(ref, manifest, check_sha=False)}")
    except DistillKitError as err:
        return Finding("assets", False, f"{label}: {err}")


def _eval_data(doc: dict[str, Any], manifest: str) -> list[Finding]:
    from distill_kit.evaluation.data import data_root, nltk_data_root
    from distill_kit.evaluation.registry import LM_EVAL_TASKS

    settings = Settings.of(doc).eval
    mode, overrides = settings.data, settings.datasets
    findings = []
    for task in [t for t in settings.tasks if t in LM_EVAL_TASKS]:
        try:
            findings.append(Finding("assets", True, f"eval data {task}: {data_root(task, mode, overrides, manifest)}"))
        except DistillKitError as err:
            findings.append(Finding("assets", False, str(err)))
    if "ifeval" in settings.tasks:
        try:
            findings.append(Finding("assets", True, f"nltk data: {nltk_data_root(mode, manifest)}"))
        except DistillKitError as err:
            findings.append(Finding("assets", False, str(err)))
    return findings


# -- (2) accelerator -------------------------------------------------------------------------------------------
def _visible_gpus() -> list[tuple[str, float]]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / GIB)
            for i in range(torch.cuda.device_count())]


def accelerator_findings(hardware: dict[str, Any], gpus: list[tuple[str, float]]) -> list[Finding]:
    """``hardware`` requirements against the visible GPUs (name, memory GiB)."""
    accelerator, count = hardware.get("accelerator", "any"), int(hardware.get("gpu_count") or 0)
    seen = ", ".join(f"{name} ({memory:.0f} GiB)" for name, memory in gpus) or "no CUDA GPU"
    needed = max(count, 1) if accelerator == "cuda" else count
    problems = []
    if needed > len(gpus):
        problems.append(f"hardware.accelerator {accelerator} / gpu_count {count} needs {needed} GPU(s); this "
                        f"process sees {seen} (check CUDA_VISIBLE_DEVICES, or run on a machine that has them)")
    used = gpus[:needed]
    models = hardware.get("gpu_models") or []
    wrong = [name for name, _ in used if models and not any(m.lower() in name.lower() for m in models)]
    if wrong:
        problems.append(f"hardware.gpu_models accepts {', '.join(models)}; this machine has {', '.join(wrong)}")
    floor = float(hardware.get("min_gpu_memory_gib") or 0)
    small = [f"{name} ({memory:.1f} GiB)" for name, memory in used if memory < floor]
    if small:
        problems.append(f"hardware.min_gpu_memory_gib is {floor:g}; {', '.join(small)} has less")
    if problems:
        return [Finding("accelerator", False, p) for p in problems]
    return [Finding("accelerator", True, f"{accelerator}, {count} GPU(s) required; this process sees {seen}")]


# -- (3) judges ------------------------------------------------------------------------------------------------
def _judges(manifest: ResolvedManifest, planned: list[Any]) -> list[Finding]:
    from distill_kit.evaluation.registry import JUDGED_TASKS

    judge = manifest.settings.eval.judge
    judged = [t for t in manifest.settings.eval.tasks if t in JUDGED_TASKS]
    if not judged or not any(p.kind == "eval" for p in planned):
        return []
    if not judge:
        return [Finding("judges", False, f"{', '.join(judged)} need(s) a judge: set eval.judge in the manifest")]
    try:
        for stage in planned:
            stage.preflight(manifest)
    except DistillKitError as err:
        return [Finding("judges", False, str(err))]
    return [Finding("judges", True, f"judge {judge.get('name') or judge['type']} for "
                                    f"{', '.join(judged)}")]


# -- (4) disk --------------------------------------------------------------------------------------------------
def _size_of(ref: dict[str, Any] | None, manifest: str) -> int | None:
    from distill_kit.assets.resolve import asset_path

    try:
        path = asset_path(ref, manifest, check_sha=False) if ref else None
    except DistillKitError:
        return None
    if path is None:
        return None
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts]
    return sum(p.stat().st_size for p in files)


def _student_params(doc: dict[str, Any], manifest: str) -> float | None:
    from distill_kit.assets.resolve import asset_path
    from distill_kit.runner.evidence import model_shape

    ref = (doc.get("models") or {}).get("student") or {}
    if ref.get("params_b"):
        return float(ref["params_b"]) * 1e9
    try:
        shape = model_shape(asset_path(ref, manifest, check_sha=False))
    except DistillKitError:
        return None
    return float(shape["parameters"]) if shape else None


def disk_estimate(doc: dict[str, Any], stages: list[str], manifest: str) -> dict[str, int]:
    """Bytes the stages will write to the run directory, by what writes them (what cannot be estimated is left
    out)."""
    parts: dict[str, int] = {}
    top_k = ((doc.get("teacher") or {}).get("logits") or {}).get("top_k")
    data_bytes = _size_of((doc.get("data") or {}).get("train"), manifest)
    if "teacher" in stages and doc.get("pipeline") == "kd" and top_k and data_bytes:
        parts["teacher logit cache"] = int(data_bytes / BYTES_PER_TEXT_TOKEN * top_k * LOGIT_BYTES_PER_ENTRY)
    params = _student_params(doc, manifest) if "student" in stages else None
    if params:
        optimizer = ((doc.get("student") or {}).get("optimizer") or {}).get("name", "adamw")
        state = 8 if optimizer.startswith("adam") and optimizer != "adafactor" else 1
        kept = _intermediate_checkpoints(doc)
        label = "student checkpoints (last two + final)" if kept == 2 else f"student checkpoints ({kept} + final)"
        parts[label] = int(params * (kept * (4 + state) + 4))
    return parts


def _intermediate_checkpoints(doc: dict[str, Any]) -> int:
    """Step checkpoints the student stage keeps on disk (the trainer keeps the last two). A rehearsal stops at its
    trained-token cap (``rehearsal.student_tokens``): it saves one only where twice its expected optimizer steps
    (cap / (batch x grad_accum x mean trained tokens per sequence), twice for the lengths' spread) reach
    ``checkpoint_every_steps``. Without this a 7B student's 400k-token calibration was refused for 91 GiB of step
    checkpoints it never writes."""
    rehearsal = doc.get("rehearsal") or {}
    if not rehearsal.get("enabled") or (doc.get("data") or {}).get("train") is None:
        return 2
    from distill_kit.manifest.settings import Settings
    from distill_kit.rehearsal.substitute import train_lengths

    student = Settings.of(doc).student
    try:
        lengths = train_lengths(doc, student.max_seq_len)
    except DistillKitError:  # the data's shape is unknown: count the full two
        return 2
    per_step = student.batch_size * student.grad_accum * lengths.mean_length(student.max_seq_len) * lengths.target_share
    steps = 2 * int(rehearsal.get("student_tokens") or 0) / max(per_step, 1.0)
    return min(2, int(steps // max(student.checkpoint_every_steps, 1)))


def _free_bytes(run_dir: Path) -> tuple[Path, int]:
    where = Path(run_dir).resolve()
    while not where.exists():
        where = where.parent
    return where, shutil.disk_usage(where).free


def _disk(doc: dict[str, Any], stages: list[str], run_dir: Path, manifest: str) -> list[Finding]:
    parts = disk_estimate(doc, stages, manifest)
    where, free = _free_bytes(run_dir)
    need = sum(parts.values())
    listed = ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in parts.items()) or "nothing large"
    if need * DISK_MARGIN > free:
        return [Finding("disk", False, f"the stages will write about {need / GIB:.1f} GiB ({listed}) under "
                                       f"{where}, which has {free / GIB:.1f} GiB free: free space or choose "
                                       "another --run-dir")]
    return [Finding("disk", True, f"about {need / GIB:.2f} GiB to write ({listed}); {free / GIB:.1f} GiB free "
                                  f"at {where}")]


def fetch_name(manifest: ResolvedManifest) -> str:
    """How ``assets fetch`` is told about this manifest: its bare name when it is one of the kit's."""
    from distill_kit.manifest.layers import BUILTIN_MANIFEST_DIR

    source = Path(manifest.source)
    return source.stem if source.resolve().parent == BUILTIN_MANIFEST_DIR.resolve() else str(source)


def preflight(manifest: ResolvedManifest, run_dir: Path, planned: list[Any], convert: bool = False
              ) -> list[Finding]:
    """Every finding, good and bad; ``convert`` converts checkpoint files (a run does, ``--dry-run`` does not)."""
    doc, source = manifest.document, fetch_name(manifest)
    stages = [p.name for p in planned]
    # A shape rehearsal replaces every hub model and dataset with random weights and token streams, and evaluates
    # by forward passes: it reads no hub asset, no eval data and no judge (distill_kit/rehearsal).
    rehearsal = bool((doc.get("rehearsal") or {}).get("enabled"))
    findings = [_asset(label, ref, source, convert) if not (rehearsal and ref.get("source") == "hf")
                else Finding("assets", True, f"{label}: rehearsal: random weights / token streams of its shape")
                for label, ref in _stage_refs(doc, stages)]  # (1)
    if "eval" in stages and not rehearsal:
        findings += _eval_data(doc, source)
    findings += accelerator_findings(doc.get("hardware") or {}, _visible_gpus())  # (2)
    findings += [] if rehearsal else _judges(manifest, planned)  # (3)
    findings += _disk(doc, stages, run_dir, source)  # (4)
    return findings


def require_preflight(manifest: ResolvedManifest, run_dir: Path, planned: list[Any]) -> list[Finding]:
    findings = preflight(manifest, run_dir, planned, convert=True)
    if not all(f.ok for f in findings):
        raise PreflightFailed(findings)
    return findings
