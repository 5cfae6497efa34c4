"""Distinct, consistent synthetic runs for the report and leaderboard tests, cheaply.

``make_run`` (tests/test_bundle.py) builds one finished KD run whose figures the kit's own accounting computed.
``variant`` copies it under another name, seed, student size and score (optionally as a ``baseline_sft`` run,
without its teacher stage) and re-derives everything that depends on them (manifest hash, journal, summaries), so
every variant still passes ``verify`` and packs to a different bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from test_bundle import make_run  # noqa: F401 - re-exported: the consistent synthetic run

from distill_kit.manifest.resolve import manifest_sha256
from distill_kit.runner.summaries import run_summary

TASK = "tiny_task"


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _student_records(stage_dir: Path, outputs: dict[str, Any], score: float) -> float:
    """Rewrite the student's per-sample records so that ``score`` of them are right (the ``quality`` check
    recomputes the score from them); returns the score they give."""
    detail = next(d for d in outputs["tasks"] if (d["model"], d["task"]) == ("student", TASK))
    path = stage_dir / detail["samples"]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    right = round(score * len(records))
    for i, record in enumerate(records):
        record["output"] = " " + (record["target"] if i < right else "x")
        record["correct"] = i < right
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    detail["score"] = right / len(records)
    if "provenance" in detail:  # what the eval stage records beside the new score
        from distill_kit.evaluation.provenance import provenance

        detail["provenance"] = provenance(detail, records, fixture_data=False)
        outputs.setdefault("provenance", {}).setdefault("student", {})[TASK] = detail["provenance"]
    return detail["score"]


def variant(base: Path, out: Path, name: str, seed: int, score: float, params_b: float | None = None,
            baseline: bool = False) -> Path:
    """A copy of the run ``base`` at ``out`` with another identity and student score (see the module doc)."""
    shutil.copytree(base, out, ignore=shutil.ignore_patterns(".*.tmp"))
    resolved = _read(out / "manifest.resolved.json")
    resolved.update(name=name, seed=seed)
    if params_b is not None:
        resolved["models"]["student"]["params_b"] = params_b
    if baseline:
        resolved["pipeline"] = "baseline_sft"
        shutil.rmtree(out / "stages" / "teacher")
    digest = manifest_sha256(resolved)
    _write(out / "manifest.resolved.json", resolved)
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    journal = [e for e in journal if not (baseline and e.get("stage") == "teacher")]
    for entry in journal:
        if "manifest_sha256" in entry:
            entry["manifest_sha256"] = digest
    (out / "journal.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in journal))
    summary = _read(out / "summary.json")
    names = [s["stage"] for s in summary["stages"] if not (baseline and s["stage"] == "teacher")]
    stages = [_read(out / "stages" / n / "summary.json") for n in names]
    for stage in stages:
        _student_shape(stage, params_b)
        scores = stage["outputs"].get("scores")
        if scores and "student" in scores:
            scores["student"][TASK] = _student_records(out / "stages" / stage["stage"], stage["outputs"], score)
        _write(out / "stages" / stage["stage"] / "summary.json", stage)
    _write(out / "summary.json", run_summary(resolved, digest, stages, summary["status"], summary["started_at"],
                                             summary["ended_at"], summary.get("run_window")))
    return out


def _student_shape(stage: dict, params_b: float | None) -> None:
    """The student's recorded shape (outputs.compute, what physics bounds FLOPs with) of a ``params_b`` model."""
    shape = ((stage["outputs"].get("compute") or {}).get("models") or {}).get("student")
    if params_b is not None and shape:
        shape["parameters"] = int(params_b * 1e9) + shape.get("embedding_parameters", 0)


def with_scores(run: Path, scores: dict[str, float]) -> Path:
    """The run with more student scores in its eval stage (``scores``: task -> score), its summary recomputed, so
    it still verifies (a 3,000-task run, or task names ingest should refuse)."""
    path = run / "stages" / "eval" / "summary.json"
    stage = _read(path)
    stage["outputs"].setdefault("scores", {}).setdefault("student", {}).update(scores)
    _write(path, stage)
    resolved = _read(run / "manifest.resolved.json")
    summary = _read(run / "summary.json")
    stages = [_read(run / "stages" / s["stage"] / "summary.json") for s in summary["stages"]]
    _write(run / "summary.json", run_summary(resolved, manifest_sha256(resolved), stages, summary["status"],
                                             summary["started_at"], summary["ended_at"], summary.get("run_window")))
    return run
