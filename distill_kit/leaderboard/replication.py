"""Replications: entries of the same resolved manifest from different teams, their spread, and whether they agree.

Two entries of different teams agree when
- energy: their total energies differ by no more than their combined stated uncertainty, sqrt(u1^2 + u2^2), each
  entry's uncertainty being its run summary's per-domain ``uncertainty_j`` combined in quadrature;
- quality: on every student task both scored, the scores differ by no more than ``QUALITY_K`` combined binomial
  standard errors, sqrt(p1(1-p1)/n1 + p2(1-p2)/n2), n being the task's number of evaluated samples (a task
  without n, or with a score outside [0, 1], cannot be judged and so does not agree).
An entry is ``replicated`` when another team's entry agrees with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from distill_kit.leaderboard.models import EnergySpread, ReplicaOut, ReplicationGroup, TaskQuality, TaskSpread

STUDENT = "student"
QUALITY_K = 2.0


@dataclass
class Replica:
    bundle_sha256: str
    team: str
    name: str
    energy_j: float | None
    uncertainty_j: float | None
    tasks: dict[str, TaskQuality] = field(default_factory=dict)


def energy_uncertainty_j(summary: dict[str, Any]) -> float | None:
    """The run's stated uncertainty on its total energy: the domains' ``uncertainty_j`` in quadrature."""
    domains = ((summary.get("totals") or {}).get("energy_by_domain") or {}).values()
    figures = [d.get("uncertainty_j") for d in domains if isinstance(d, dict) and d.get("energy_j") is not None]
    if not figures or any(not isinstance(u, int | float) for u in figures):
        return None
    return math.sqrt(sum(float(u) ** 2 for u in figures))


def binomial_se(p: float, n: int | None) -> float | None:
    if not n or n <= 0 or not 0.0 <= p <= 1.0:
        return None
    return math.sqrt(p * (1.0 - p) / n)


def replica(sha: str, team: str, name: str, energy_j: float | None, summary: dict[str, Any],
            stages: list[dict[str, Any]], scores: dict[str, float]) -> Replica:
    sizes = {t.get("task"): t.get("n") for s in stages if s.get("kind") == "eval" for t in s.get("eval_tasks") or []
             if t.get("model") == STUDENT}
    tasks = {task: TaskQuality(score=p, n=sizes.get(task), se=binomial_se(p, sizes.get(task)))
             for task, p in scores.items()}
    return Replica(sha, team, name, energy_j, energy_uncertainty_j(summary), tasks)


def _energy_agrees(a: Replica, b: Replica) -> bool:
    if a.energy_j is None or b.energy_j is None or a.uncertainty_j is None or b.uncertainty_j is None:
        return False
    return abs(a.energy_j - b.energy_j) <= math.hypot(a.uncertainty_j, b.uncertainty_j)


def _quality_agrees(a: Replica, b: Replica) -> bool:
    for task in a.tasks.keys() & b.tasks.keys():
        qa, qb = a.tasks[task], b.tasks[task]
        if qa.se is None or qb.se is None:
            return False
        if abs(qa.score - qb.score) > QUALITY_K * math.hypot(qa.se, qb.se):
            return False
    return True


def agree(a: Replica, b: Replica) -> bool:
    return a.team != b.team and _energy_agrees(a, b) and _quality_agrees(a, b)


def group(manifest_sha256: str, replicas: list[Replica]) -> ReplicationGroup:
    """One manifest's entries (two teams or more): the spread in energy and per task, and who agrees with whom."""
    energies = [r.energy_j for r in replicas if r.energy_j is not None]
    low, high = (min(energies), max(energies)) if energies else (None, None)
    spread = (high - low) / ((high + low) / 2) if low is not None and high is not None and high + low > 0 else None
    tasks = sorted({t for r in replicas for t in r.tasks})
    quality = []
    for task in tasks:
        scores = [r.tasks[task].score for r in replicas if task in r.tasks]
        quality.append(TaskSpread(task=task, min=min(scores), max=max(scores), spread=max(scores) - min(scores),
                                  entries=len(scores)))
    out = []
    for r in replicas:
        agreeing = [o.bundle_sha256 for o in replicas if o is not r and agree(r, o)]
        out.append(ReplicaOut(bundle_sha256=r.bundle_sha256, team=r.team, name=r.name, total_energy_j=r.energy_j,
                              energy_uncertainty_j=r.uncertainty_j, quality=r.tasks, replicated=bool(agreeing),
                              agrees_with=agreeing))
    return ReplicationGroup(manifest_sha256=manifest_sha256, teams=sorted({r.team for r in replicas}),
                            entries=out, energy=EnergySpread(min_j=low, max_j=high, relative_spread=spread),
                            quality=quality, replicated=any(e.replicated for e in out))
