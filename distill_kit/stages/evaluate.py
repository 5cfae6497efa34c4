"""Eval stage: score each model the manifest lists on each task, one energy window per (model, task).

Models: ``teacher`` and ``student_initial`` (the manifest's assets) and ``student`` (``stages/student/final``).
Per-sample outputs go to ``samples/<model>.<task>.jsonl`` so a verifier can recompute the scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill_kit._io import atomic_write_text
from distill_kit.assets.resolve import asset_path, tokenizer_path
from distill_kit.evaluation.registry import EvalSettings, run_task
from distill_kit.stages.base import StageContext, StageResult

DEFAULT_TASKS = ["tiny_task"]


class EvalStage:
    kind = "eval"

    def setup(self, ctx: StageContext) -> None:
        doc = ctx.manifest.document
        self.ctx = ctx
        settings = doc.get("eval", {})
        self.models = settings.get("models", ["student"])
        self.tasks = settings.get("tasks", DEFAULT_TASKS)
        eval_ref = doc["data"].get("eval")
        self.settings = EvalSettings(device=ctx.device, limit=settings.get("limit"),
                                     batch_size=settings.get("batch_size", 32),
                                     max_new_tokens=settings.get("max_new_tokens"),
                                     data_dir=asset_path(eval_ref, doc["name"]) if eval_ref else None)
        self.tokenizer_dir = tokenizer_path(doc)
        self.model_dirs = {name: self._model_dir(name) for name in self.models}

    def _model_dir(self, name: str) -> Path:
        doc = self.ctx.manifest.document
        if name == "student":
            if doc["pipeline"] == "eval_only":
                return asset_path(doc["models"]["student"], doc["name"])
            final = self.ctx.output_of("student") / "final"
            if not (final / "config.json").exists():
                raise FileNotFoundError(f"no trained student at {final} (did the student stage finish?)")
            return final
        if name == "student_initial":
            return asset_path(doc["models"]["student"], doc["name"])
        return asset_path(doc["models"]["teacher"], doc["name"])

    def run(self) -> StageResult:
        scores: dict[str, dict[str, float]] = {}
        details: list[dict[str, Any]] = []
        windows = []
        pairs = [(m, t) for m in self.models for t in self.tasks]
        for model, task in self.ctx.progress.track(pairs, len(pairs), "eval"):
            with self.ctx.measure(f"{model}/{task}") as window:
                score = run_task(task, self.model_dirs[model], self.tokenizer_dir, self.settings)
            samples_file = f"samples/{model}.{task}.jsonl"
            atomic_write_text(self.ctx.stage_dir / samples_file,
                              "".join(json.dumps(s, sort_keys=True) + "\n" for s in score.samples))
            scores.setdefault(model, {})[task] = score.score
            energy_j = _window_total(window)
            details.append({"model": model, "task": task, "metric": score.metric, "score": score.score,
                            "n": score.n, "tokens": score.tokens, "full": score.full, "samples": samples_file,
                            "energy_j": energy_j, "j_per_sample": energy_j / score.n if energy_j and score.n else None,
                            "details": score.details})
            windows.append(window)
            self.ctx.progress.log(f"eval: {model} {task} {score.metric}={score.score:.3f} (n={score.n})")
        return StageResult(tokens=sum(d["tokens"] for d in details), token_kind="eval_tokens", outputs={
            "scores": scores, "tasks": details, "windows": windows,
            "full_evaluation": all(d["full"] for d in details),
        })

    def cleanup(self) -> None:
        pass


def _window_total(window: dict[str, Any]) -> float | None:
    values = [f["energy_j"] for f in window.get("energy", {}).values() if f.get("energy_j") is not None]
    return sum(values) if values else None
