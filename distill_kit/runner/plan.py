"""Which stages a run runs (the pipeline's, or the manifest's selection of them), in order, and where each
stage's code lives (imported only when it runs)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from distill_kit.manifest import ResolvedManifest
from distill_kit.manifest.pipelines import PIPELINES, selected_stage_names

__all__ = ["PIPELINES", "STAGE_CLASSES", "PlannedStage", "plan"]
from distill_kit.stages.base import Stage

STAGE_CLASSES = {
    "prerun": "distill_kit.stages.prerun:PrerunStage",
    "teacher_logits": "distill_kit.stages.teacher_logits:TeacherLogitsStage",
    "kd": "distill_kit.stages.kd:StudentStage",
    "teacher_generation": "distill_kit.stages.teacher_generation:TeacherGenerationStage",
    "filter": "distill_kit.stages.filter:FilterStage",
    "sft": "distill_kit.stages.sft:SFTStage",
    "eval": "distill_kit.stages.evaluate:EvalStage",
    "rehearsal_eval": "distill_kit.stages.rehearsal_eval:RehearsalEvalStage",
    "preprocess": "distill_kit.stages.preprocess:PreprocessStage",
    "preference": "distill_kit.stages.preference:PreferenceStage",
}
# A rehearsal (manifest ``rehearsal.enabled``) swaps these stage classes for its own; the others substitute weights
# and data themselves (distill_kit.rehearsal.substitute).
REHEARSAL_CLASSES = {"eval": "rehearsal_eval"}
REHEARSABLE = ("kd", "sft", "baseline_sft", "eval_only")

@dataclass(frozen=True)
class PlannedStage:
    name: str  # folder under stages/, unique within a run
    kind: str
    implementation: str | None = None  # the STAGE_CLASSES key, when it is not ``kind``

    @property
    def _class_path(self) -> str:
        return STAGE_CLASSES[self.implementation or self.kind]

    def preflight(self, manifest: ResolvedManifest) -> None:
        """The stage's cheap checks of things only the running machine can tell (a reachable endpoint...)."""
        module_name, _, class_name = self._class_path.partition(":")
        check = getattr(getattr(importlib.import_module(module_name), class_name), "preflight", None)
        if check is not None:
            check(manifest)

    def load(self) -> Stage:
        module_name, _, class_name = self._class_path.partition(":")
        stage: Stage = getattr(importlib.import_module(module_name), class_name)()
        return stage


def plan(manifest: ResolvedManifest) -> list[PlannedStage]:
    from distill_kit.errors import InvalidInput

    if manifest.pipeline not in PIPELINES:
        raise InvalidInput(f"pipeline '{manifest.pipeline}' is not implemented yet in this version of the kit "
                           f"(implemented: {', '.join(sorted(PIPELINES))})")
    selected = selected_stage_names(manifest.document)
    stages = [(name, kind) for name, kind in PIPELINES[manifest.pipeline] if name in selected]
    if not (manifest.document.get("rehearsal") or {}).get("enabled"):  # see distill_kit.rehearsal
        return [PlannedStage(name, kind) for name, kind in stages]
    if manifest.pipeline not in REHEARSABLE:
        raise InvalidInput(f"a rehearsal of the '{manifest.pipeline}' pipeline is not implemented yet in this "
                           f"version of the kit (rehearsable: {', '.join(REHEARSABLE)})")
    return [PlannedStage(name, kind, REHEARSAL_CLASSES.get(kind)) for name, kind in stages]
