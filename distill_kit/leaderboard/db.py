"""Tables (SQLAlchemy 2), the engine (SQLite in WAL mode, or PostgreSQL through psycopg 3), and migrations.

The schema is owned by alembic (``migrations/``): ``migrate(engine)`` upgrades any database to the head revision
and is what the server and the admin commands call before touching it. The ORM classes below mirror the
migrations and are never used to create tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PENDING, STORED, MISSING = "pending", "stored", "missing"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SigningKey(Base):
    """A team's Ed25519 public key; ``key_id`` is the sha256 of its raw bytes (as ``distill-kit keygen`` says)."""

    __tablename__ = "signing_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    public_key_pem: Mapped[str] = mapped_column(Text)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    team: Mapped[Team] = relationship()


class Entry(Base):
    """An accepted bundle: stored at ``bundles/<bundle_sha256>.tar``, with the figures the pages rank by.

    ``state`` is ``pending`` from the insert until the bundle file is durably in place, then ``stored``; only
    stored entries that are not ``hidden`` are shown. ``run_sha256`` is the run's identity (one run, one entry).
    """

    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bundle_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("signing_keys.key_id"))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(200))
    pipeline: Mapped[str] = mapped_column(String(40), index=True)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    kit_version: Mapped[str | None] = mapped_column(String(40), nullable=True)
    student_params_b: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    total_energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_above_idle_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    teacher_energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    wall_time_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    j_per_trained_token: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_tier: Mapped[str] = mapped_column(String(20))
    containerised: Mapped[bool] = mapped_column(Boolean)
    methods: Mapped[list[str]] = mapped_column(JSON)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    stages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    verify_report: Mapped[dict[str, Any]] = mapped_column(JSON)
    run_sha256: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    state: Mapped[str] = mapped_column(String(10), default=STORED)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    hidden_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    hidden_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    team: Mapped[Team] = relationship()
    scores: Mapped[list[Score]] = relationship(back_populates="entry", cascade="all, delete-orphan",
                                               order_by="Score.model, Score.task")


class Score(Base):
    """One model's score on one task in an entry (the student's is the one ranked)."""

    __tablename__ = "scores"

    entry_id: Mapped[int] = mapped_column(ForeignKey("entries.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    task: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
    score: Mapped[float] = mapped_column(Float)
    # where the score comes from (the run's quality_provenance, which verify checks): full | subset | fixture;
    # NULL for bundles made before provenance was recorded. Only full scores are ranked by default.
    source: Mapped[str | None] = mapped_column(String(10), nullable=True)

    entry: Mapped[Entry] = relationship(back_populates="scores")


class Moderation(Base):
    """A moderator's action (hide, delete, ban-key), or the reconciler's repair, with its reason and time."""

    __tablename__ = "moderation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    action: Mapped[str] = mapped_column(String(20))
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    run_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(Text)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest schema (alembic ``upgrade head``, run programmatically)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
