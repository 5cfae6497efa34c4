"""The manifest's ``rehearsal`` block: whether this run is a rehearsal, and its token caps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill_kit.manifest.settings import Settings, with_defaults


def is_rehearsal(document: dict[str, Any]) -> bool:
    return bool((document.get("rehearsal") or {}).get("enabled"))


@dataclass(frozen=True)
class RehearsalSettings:
    teacher_tokens: int  # teacher forward tokens (KD caching) or prompt tokens (generation)
    student_tokens: int  # trained (loss-bearing) tokens of the student stage
    eval_tokens: int  # forward tokens per evaluated model (evaluation in a rehearsal = forward passes only)
    seed: int
    stand_in_teacher: bool = False  # a one-layer narrow teacher: its outputs' format and sizes, not its cost

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RehearsalSettings:
        block = with_defaults(document)["rehearsal"]  # the caps' defaults: manifest/settings.py
        return cls(teacher_tokens=int(block["teacher_tokens"]), student_tokens=int(block["student_tokens"]),
                   eval_tokens=int(block["eval_tokens"]),
                   seed=int(document["seed"]),
                   stand_in_teacher=Settings.of(document).rehearsal.stand_in_teacher)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"teacher_tokens": self.teacher_tokens, "student_tokens": self.student_tokens,
                               "eval_tokens": self.eval_tokens}
        if self.stand_in_teacher:
            out["stand_in_teacher"] = True
        return out


_SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def parse_token_count(text: str) -> int:
    """``2M`` -> 2,000,000; ``500k``; ``1_000``; a plain integer. Raises ValueError with the accepted forms."""
    cleaned = text.strip().lower().replace("_", "").replace(",", "")
    suffix = cleaned[-1:] if cleaned[-1:] in _SUFFIXES else ""
    number = cleaned[: len(cleaned) - len(suffix)]
    try:
        value = float(number) * _SUFFIXES[suffix]
    except ValueError:
        raise ValueError(f"'{text}' is not a token count (examples: 2M, 500k, 20000)") from None
    if value < 1 or value != int(value):
        raise ValueError(f"'{text}' is not a whole positive token count (examples: 2M, 500k, 20000)")
    return int(value)


def rehearsal_overrides(tokens: str | None) -> list[str]:
    """The manifest overrides ``run --rehearse [--rehearse-tokens N]`` stands for (so the Docker runtime, the run
    directory's resolved manifest and its hash all see the rehearsal)."""
    overrides = ["rehearsal.enabled=true"]
    if tokens is not None:
        count = parse_token_count(tokens)
        overrides += [f"rehearsal.teacher_tokens={count}", f"rehearsal.student_tokens={count}"]
    return overrides
