"""The leaderboard's SQL store: teams and keys, entries and their scores, the rankings and frontiers.

Every method opens its own short session (safe from any thread). Entries are unique by bundle sha256: adding one
twice returns the first (``created=False``), whichever request won the race.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from distill_kit.bundle.keys import key_id, keyring_entry, public_key_from_pem, public_key_pem
from distill_kit.errors import InvalidInput
from distill_kit.leaderboard.db import Entry, Score, SigningKey, Team, make_engine, migrate
from distill_kit.leaderboard.models import EntryDetail, EntryOut, KeyOut, ParetoOut, ParetoPoint, Tier
from distill_kit.report.analysis import Point, pareto_frontier, run_tier

STUDENT = "student"


class KeyConflict(InvalidInput):
    """The key is registered to another team, or was revoked."""


class UnknownKey(InvalidInput):
    """No such registered key."""


@dataclass
class EntryFilter:
    pipeline: str | None = None
    task: str | None = None
    team: str | None = None
    student_params_b: float | None = None
    min_params_b: float | None = None
    max_params_b: float | None = None
    tier: str | None = None
    limit: int = 500
    offset: int = 0


@dataclass
class NewEntry:
    """What an accepted bundle contributes (built by ``verifier.extract``)."""

    bundle_sha256: str
    key_id: str
    size_bytes: int
    name: str
    pipeline: str
    manifest_sha256: str
    kit_version: str | None
    student_params_b: float | None
    total_energy_j: float | None
    energy_above_idle_j: float | None
    teacher_energy_j: float | None
    wall_time_s: float | None
    j_per_trained_token: float | None
    energy_tier: str
    containerised: bool
    methods: list[str]
    summary: dict[str, Any]
    stages: list[dict[str, Any]]
    verify_report: dict[str, Any]
    scores: dict[str, dict[str, float]]


def _utc(when: datetime | None) -> datetime | None:
    """SQLite keeps no time zone: every time the store writes is UTC."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def _key_out(key: SigningKey) -> KeyOut:
    return KeyOut(key_id=key.key_id, team=key.team.name, added_at=_utc(key.added_at), revoked=key.revoked,
                  revoked_at=_utc(key.revoked_at), revoked_reason=key.revoked_reason)


def _tier(entry: Entry) -> Tier:
    tier = run_tier({"totals": {"methods": entry.methods}}, {"container": {"inside": entry.containerised}})
    return Tier(energy=tier.energy, containerised=tier.containerised, methods=list(tier.methods), label=tier.label)


def entry_out(entry: Entry) -> dict[str, Any]:
    scores: dict[str, dict[str, float]] = {}
    for score in entry.scores:
        scores.setdefault(score.model, {})[score.task] = score.score
    sha = entry.bundle_sha256
    return {"bundle_sha256": sha, "team": entry.team.name, "key_id": entry.key_id,
            "submitted_at": _utc(entry.submitted_at), "name": entry.name, "pipeline": entry.pipeline,
            "student_params_b": entry.student_params_b,
            "total_energy_j": entry.total_energy_j, "energy_above_idle_j": entry.energy_above_idle_j,
            "teacher_energy_j": entry.teacher_energy_j, "wall_time_s": entry.wall_time_s,
            "j_per_trained_token": entry.j_per_trained_token, "tier": _tier(entry), "scores": scores,
            "size_bytes": entry.size_bytes, "url": f"/entries/{sha}", "bundle_url": f"/api/entries/{sha}/bundle"}


def _eval_tasks(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for s in stages if s.get("kind") == "eval" for t in s.get("eval_tasks") or []]


class Store:
    def __init__(self, url: str, upgrade: bool = True):
        self.engine: Engine = make_engine(url)
        if upgrade:
            migrate(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- teams and keys ----------------------------------------------------------------------------------------
    def _team(self, session: Session, name: str) -> Team:
        team = session.scalar(select(Team).where(Team.name == name))
        if team is None:
            team = Team(name=name)
            session.add(team)
            session.flush()
        return team

    def add_key(self, team_name: str, pem: bytes | str, source: str = "the public key") -> tuple[KeyOut, bool]:
        """Register ``pem`` for ``team_name`` (created if new). Returns (key, created)."""
        team_name = team_name.strip()
        if not team_name:
            raise InvalidInput("the team name is empty")
        public = public_key_from_pem(pem.encode() if isinstance(pem, str) else pem, source)
        kid = key_id(public)
        try:
            with self.sessions.begin() as session:
                existing = session.get(SigningKey, kid)
                if existing is not None:
                    if existing.revoked:
                        raise KeyConflict(f"key {kid} was revoked ({existing.revoked_reason}): it cannot be "
                                          "registered again; generate a new key")
                    if existing.team.name != team_name:
                        raise KeyConflict(f"key {kid} is already registered to team {existing.team.name!r}")
                    return _key_out(existing), False
                key = SigningKey(key_id=kid, team=self._team(session, team_name),
                                 public_key_pem=public_key_pem(public).decode("ascii"))
                session.add(key)
                session.flush()
                return _key_out(key), True
        except IntegrityError:  # registered concurrently: report what won
            return self.add_key(team_name, pem, source)

    def revoke_key(self, kid: str, reason: str) -> KeyOut:
        with self.sessions.begin() as session:
            key = session.get(SigningKey, kid)
            if key is None:
                raise UnknownKey(f"no registered key {kid}")
            if not key.revoked:
                key.revoked, key.revoked_at, key.revoked_reason = True, datetime.now(UTC), reason
            return _key_out(key)

    def keys(self) -> list[KeyOut]:
        with self.sessions() as session:
            rows = session.scalars(select(SigningKey).options(selectinload(SigningKey.team))
                                   .order_by(SigningKey.added_at, SigningKey.key_id))
            return [_key_out(k) for k in rows]

    def key(self, kid: str) -> KeyOut | None:
        with self.sessions() as session:
            key = session.get(SigningKey, kid)
            return _key_out(key) if key else None

    def keyring(self) -> list[dict[str, Any]]:
        """Every registered key as a keyring entry (revoked ones flagged), named after its team."""
        with self.sessions() as session:
            rows = session.scalars(select(SigningKey).options(selectinload(SigningKey.team)))
            return [keyring_entry(public_key_from_pem(k.public_key_pem.encode(), k.key_id), k.team.name,
                                  revoked=k.revoked, revoked_reason=k.revoked_reason) for k in rows]

    # -- entries -----------------------------------------------------------------------------------------------
    def add_entry(self, new: NewEntry) -> tuple[EntryOut, bool]:
        """Insert the entry (its team is its key's). Returns (entry, created); a duplicate returns the first."""
        fields = {k: v for k, v in new.__dict__.items() if k != "scores"}
        try:
            with self.sessions.begin() as session:
                key = session.get(SigningKey, new.key_id)
                if key is None:
                    raise UnknownKey(f"no registered key {new.key_id}")
                entry = Entry(team_id=key.team_id, **fields)
                entry.scores = [Score(model=m, task=t, score=float(s)) for m, tasks in new.scores.items()
                                for t, s in tasks.items()]
                session.add(entry)
                session.flush()
                session.refresh(entry)
                return EntryOut(**entry_out(entry)), True
        except IntegrityError:
            existing = self.entry(new.bundle_sha256)
            if existing is None:
                raise
            return existing, False

    def _load(self, session: Session, sha: str) -> Entry | None:
        return session.scalar(select(Entry).where(Entry.bundle_sha256 == sha)
                              .options(selectinload(Entry.scores), selectinload(Entry.team)))

    def entry(self, sha: str) -> EntryOut | None:
        with self.sessions() as session:
            entry = self._load(session, sha)
            return EntryOut(**entry_out(entry)) if entry else None

    def entry_detail(self, sha: str) -> EntryDetail | None:
        with self.sessions() as session:
            entry = self._load(session, sha)
            if entry is None:
                return None
            return EntryDetail(**entry_out(entry), stages=entry.stages, eval_tasks=_eval_tasks(entry.stages),
                               summary=entry.summary, verify_report=entry.verify_report)

    def count(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(Entry)) or 0

    def _query(self, f: EntryFilter) -> Any:
        query = select(Entry).options(selectinload(Entry.scores), selectinload(Entry.team))
        if f.pipeline:
            query = query.where(Entry.pipeline == f.pipeline)
        if f.team:
            query = query.join(Team, Entry.team_id == Team.id).where(Team.name == f.team)
        if f.student_params_b is not None:
            query = query.where(Entry.student_params_b == f.student_params_b)
        if f.min_params_b is not None:
            query = query.where(Entry.student_params_b >= f.min_params_b)
        if f.max_params_b is not None:
            query = query.where(Entry.student_params_b <= f.max_params_b)
        if f.tier:
            query = query.where(Entry.energy_tier == f.tier)
        if f.task:
            score = select(Score.score).where(Score.entry_id == Entry.id, Score.model == STUDENT,
                                              Score.task == f.task).scalar_subquery()
            query = query.where(score.is_not(None)).order_by(score.desc(), Entry.total_energy_j.asc(), Entry.id)
        else:
            query = query.order_by(Entry.total_energy_j.asc(), Entry.id)
        return query.offset(f.offset).limit(f.limit)

    def entries(self, f: EntryFilter | None = None) -> list[EntryOut]:
        """Entries matching ``f``: ranked by the student's quality on ``f.task`` (then by energy) when a task is
        given, otherwise by total energy."""
        with self.sessions() as session:
            return [EntryOut(**entry_out(e)) for e in session.scalars(self._query(f or EntryFilter()))]

    def tasks(self) -> list[tuple[str, int]]:
        with self.sessions() as session:
            rows = session.execute(select(Score.task, func.count()).where(Score.model == STUDENT)
                                   .group_by(Score.task).order_by(Score.task))
            return [(task, count) for task, count in rows]

    def pareto(self, task: str) -> ParetoOut:
        """Student quality on ``task`` vs total energy for every entry that has both; the frontier marked."""
        entries = [e for e in self.entries(EntryFilter(task=task, limit=100_000)) if e.total_energy_j is not None]
        points = [Point(e.bundle_sha256, float(e.total_energy_j), e.scores[STUDENT][task])  # type: ignore[arg-type]
                  for e in entries]
        frontier = [p.key for p in pareto_frontier(points)]
        on = set(frontier)
        return ParetoOut(task=task, frontier=frontier, points=[
            ParetoPoint(bundle_sha256=e.bundle_sha256, name=e.name, team=e.team, total_energy_j=p.energy_j,
                        quality=p.quality, on_frontier=p.key in on) for e, p in zip(entries, points, strict=True)])

    # -- serving (added for the pages' plot cache) ------------------------------------------------------------
    def data_version(self) -> tuple[int, int]:
        """A marker of the entries' state, for caches: (number of entries, highest entry id). Any entry added or
        deleted changes it; a change made in place to an entry's row must also change it (or rely on the cache's
        expiry)."""
        with self.sessions() as session:
            count, highest = session.execute(select(func.count(Entry.id), func.max(Entry.id))).one()
            return int(count or 0), int(highest or 0)

    def pareto_lean(self, task: str) -> ParetoOut:
        """``pareto(task)`` in one query of the five columns it needs: the same entries (``_query``'s filters),
        without loading every score of every entry (an entry may hold thousands)."""
        ids = self._query(EntryFilter(task=task, limit=100_000)).with_only_columns(Entry.id).order_by(None)
        with self.sessions() as session:
            rows = session.execute(
                select(Entry.bundle_sha256, Entry.name, Team.name, Entry.total_energy_j, Score.score)
                .join(Team, Entry.team_id == Team.id).join(Score, Score.entry_id == Entry.id)
                .where(Entry.id.in_(ids), Score.model == STUDENT, Score.task == task,
                       Entry.total_energy_j.is_not(None))
                .order_by(Score.score.desc(), Entry.total_energy_j.asc(), Entry.id)).all()
        points = [Point(sha, float(energy), float(score)) for sha, _, _, energy, score in rows]
        frontier = [p.key for p in pareto_frontier(points)]
        on = set(frontier)
        return ParetoOut(task=task, frontier=frontier, points=[
            ParetoPoint(bundle_sha256=sha, name=name, team=team, total_energy_j=p.energy_j, quality=p.quality,
                        on_frontier=sha in on) for (sha, name, team, _, _), p in zip(rows, points, strict=True)])
