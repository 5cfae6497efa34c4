"""The eval stage's evidence as the ``quality`` and ``evaluation`` checks read it: each (model, task) the stage
reports, its per-sample records, the lm-eval task config it ran with, lm-eval's own results file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from distill_kit.bundle.context import VerifyContext, stage_member
from distill_kit.errors import VerificationError


@dataclass
class TaskEvidence:
    stage: str
    detail: dict[str, Any]  # the stage summary's outputs.tasks[*]
    records: list[dict[str, Any]] | None  # None: no per-sample records bundled

    @property
    def label(self) -> str:
        return f"{self.detail['model']}/{self.detail['task']}"


def eval_stages(ctx: VerifyContext) -> list[str]:
    return [s for s in ctx.stage_names() if ctx.stage_summary(s)["kind"] == "eval"]


def read_records(ctx: VerifyContext, stage: str, relative: Any) -> list[dict[str, Any]] | None:
    """The JSONL records at ``stages/<stage>/<relative>``; None when the bundle does not hold them."""
    if not isinstance(relative, str) or not relative.startswith("samples/"):
        return None
    name = stage_member(stage, relative)
    if name not in ctx.members:
        return None

    def parse() -> list[dict[str, Any]]:
        try:
            rows = [json.loads(line) for line in ctx.data(name).decode("utf-8").splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise VerificationError(f"{name} is not JSON lines: {err}") from err
        if not all(isinstance(r, dict) for r in rows):
            raise VerificationError(f"{name}: a record is not a JSON object")
        return rows

    return ctx._cached(f"records:{name}", parse)


def task_evidence(ctx: VerifyContext) -> list[TaskEvidence]:
    found = []
    for stage in eval_stages(ctx):
        outputs = ctx.stage_summary(stage).get("outputs") or {}
        for detail in outputs.get("tasks") or []:
            if isinstance(detail, dict) and isinstance(detail.get("task"), str) and \
                    isinstance(detail.get("model"), str):
                found.append(TaskEvidence(stage, detail, read_records(ctx, stage, detail.get("samples"))))
    return found


def lm_eval_config(ctx: VerifyContext, stage: str, task: str) -> dict[str, Any] | None:
    """The flat lm-eval task config the run used (``lm_eval_tasks/dk_<task>.yaml``), ``!function`` tags as text."""
    name = stage_member(stage, f"lm_eval_tasks/dk_{task}.yaml")
    if name not in ctx.members:
        return None
    import yaml

    from distill_kit.evaluation.lm_eval_tasks import load_config

    try:
        return load_config(ctx.data(name).decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise VerificationError(f"{name} is not a readable task config: {err}") from err


def lm_eval_results(ctx: VerifyContext, stage: str, model: str, task: str) -> tuple[str, dict[str, Any]] | None:
    """lm-eval's own aggregated results file for (model, task), as its tracker wrote it, with its member name."""
    prefix = stage_member(stage, f"lm_eval/{model}/{task}/{task}_")
    names = sorted(n for n in ctx.members if n.startswith(prefix) and n.endswith(".json"))
    if not names:
        return None
    document = ctx.json(names[-1])
    return (names[-1], document) if isinstance(document, dict) else None


def _data_digests(ctx: VerifyContext, stage: str, task: str) -> set[str]:
    """sha256 of the data files the lm-eval task folder recorded for ``task`` (their paths name the task)."""
    folder = (ctx.stage_summary(stage).get("outputs") or {}).get("lm_eval_tasks") or {}
    files = folder.get("data_files") if isinstance(folder, dict) else None
    return {d for path, d in (files or {}).items() if task in str(path).lower().replace("-", "_")}


def derive_source(ctx: VerifyContext, item: TaskEvidence) -> tuple[str, str]:
    """Where (model, task)'s score comes from (full / subset / fixture), from its records and its data's digests
    (never from the run's own ``full`` flag or provenance), with the reason."""
    from distill_kit.evaluation.benchmarks import data_source, fixture_digests

    task = item.detail["task"]
    fixture_data = item.detail.get("data") == "fixtures" or bool(_data_digests(ctx, item.stage, task)
                                                                  & fixture_digests())
    return data_source(task, item.records, fixture_data)


_TIMESTAMPED = re.compile(r"^samples_(?P<task>.+)_\d{4}-\d{2}-\d{2}T[0-9.\-]+\.jsonl$")


def lm_eval_samples(ctx: VerifyContext, stage: str, model: str, task: str) -> list[tuple[str, dict[str, Any]]] | None:
    """lm-eval's own per-sample rows for (model, task), each with its lm-eval task name (mmlu: one per subject);
    None when the bundle holds no samples file for it."""
    prefix = stage_member(stage, f"lm_eval/{model}/{task}/")
    rows: list[tuple[str, dict[str, Any]]] = []
    found = False
    for name in sorted(n for n in ctx.members if n.startswith(prefix)):
        match = _TIMESTAMPED.match(name[len(prefix):])
        if not match:
            continue
        found = True
        try:
            lines = ctx.data(name).decode("utf-8").splitlines()
            rows += [(match["task"], json.loads(line)) for line in lines if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise VerificationError(f"{name} is not JSON lines: {err}") from err
    return rows if found else None
