"""Ingest hardening: the run's identity (one run, one entry), the pending/stored state of an entry, hidden
entries, the moderation log, and finite numbers only.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FINITE = "BETWEEN -1e308 AND 1e308"  # NaN and +-Infinity fail it (SQLite stores NaN as NULL: NOT NULL catches it)
ENTRY_FIGURES = ("student_params_b", "total_energy_j", "energy_above_idle_j", "teacher_energy_j", "wall_time_s",
                 "j_per_trained_token")


def upgrade() -> None:
    # plain ADD COLUMN (no table copy on SQLite: dropping `entries` there would cascade into `scores`)
    op.add_column("entries", sa.Column("run_sha256", sa.String(64), nullable=True))
    op.add_column("entries", sa.Column("state", sa.String(10), nullable=False, server_default="stored"))
    op.add_column("entries", sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("entries", sa.Column("hidden_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("entries", sa.Column("hidden_reason", sa.Text, nullable=True))
    op.create_index("ix_entries_run_sha256", "entries", ["run_sha256"], unique=True)
    if op.get_bind().dialect.name != "sqlite":  # SQLite cannot add a CHECK without copying the table
        for column in ENTRY_FIGURES:
            op.create_check_constraint(f"ck_entries_{column}_finite", "entries",
                                       f"{column} IS NULL OR {column} {FINITE}")
    _hide_poisoned()
    with op.batch_alter_table("scores") as batch:
        batch.create_check_constraint("ck_scores_score_finite", f"score {FINITE}")
    _scrub_report_paths()
    op.create_table(
        "moderation",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("bundle_sha256", sa.String(64), nullable=True, index=True),
        sa.Column("run_sha256", sa.String(64), nullable=True, index=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
    )


def _hide_poisoned() -> None:
    """An entry stored with a non-finite score (accepted before this schema) is hidden, its bad scores dropped."""
    bad = f"NOT (score {FINITE})"
    op.execute(f"UPDATE entries SET hidden = {'1' if op.get_bind().dialect.name == 'sqlite' else 'true'}, "
               "hidden_reason = 'a non-finite score (hidden by migration 0002)' "
               f"WHERE id IN (SELECT entry_id FROM scores WHERE {bad})")
    op.execute(f"DELETE FROM scores WHERE {bad}")


def _scrub_report_paths() -> None:
    """Stored verify reports named the server's temporary upload path: name the bundle by its sha256 instead."""
    entries = sa.table("entries", sa.column("id", sa.Integer), sa.column("bundle_sha256", sa.String),
                       sa.column("verify_report", sa.JSON))
    bind = op.get_bind()
    for row in bind.execute(sa.select(entries.c.id, entries.c.bundle_sha256, entries.c.verify_report)).all():
        report = dict(row.verify_report or {})
        report["bundle"] = {**(report.get("bundle") or {}), "path": f"{row.bundle_sha256}.tar"}
        bind.execute(entries.update().where(entries.c.id == row.id).values(verify_report=report))


def downgrade() -> None:
    op.drop_table("moderation")
    with op.batch_alter_table("scores") as batch:
        batch.drop_constraint("ck_scores_score_finite", type_="check")
    if op.get_bind().dialect.name != "sqlite":
        for column in ENTRY_FIGURES:
            op.drop_constraint(f"ck_entries_{column}_finite", "entries", type_="check")
    op.drop_index("ix_entries_run_sha256", "entries")
    for column in ("hidden_reason", "hidden_at", "hidden", "state", "run_sha256"):
        op.drop_column("entries", column)
