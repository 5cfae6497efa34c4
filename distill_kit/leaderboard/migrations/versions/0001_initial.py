"""The first schema: teams, their signing keys, entries (accepted bundles) and their scores.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "signing_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id"), nullable=False, index=True),
        sa.Column("public_key_pem", sa.Text, nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.Text, nullable=True),
    )
    op.create_table(
        "entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("bundle_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id"), nullable=False, index=True),
        sa.Column("key_id", sa.String(64), sa.ForeignKey("signing_keys.key_id"), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("pipeline", sa.String(40), nullable=False, index=True),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("kit_version", sa.String(40), nullable=True),
        sa.Column("student_params_b", sa.Float, nullable=True, index=True),
        sa.Column("total_energy_j", sa.Float, nullable=True),
        sa.Column("energy_above_idle_j", sa.Float, nullable=True),
        sa.Column("teacher_energy_j", sa.Float, nullable=True),
        sa.Column("wall_time_s", sa.Float, nullable=True),
        sa.Column("j_per_trained_token", sa.Float, nullable=True),
        sa.Column("energy_tier", sa.String(20), nullable=False),
        sa.Column("containerised", sa.Boolean, nullable=False),
        sa.Column("methods", sa.JSON, nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("stages", sa.JSON, nullable=False),
        sa.Column("verify_report", sa.JSON, nullable=False),
    )
    op.create_table(
        "scores",
        sa.Column("entry_id", sa.Integer, sa.ForeignKey("entries.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("model", sa.String(100), primary_key=True),
        sa.Column("task", sa.String(200), primary_key=True, index=True),
        sa.Column("score", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scores")
    op.drop_table("entries")
    op.drop_table("signing_keys")
    op.drop_table("teams")
