"""Where each score comes from (full / subset / fixture), so the ranking by a task lists full evaluations only
unless asked for the others.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (no table copy on SQLite); entries stored before it keep NULL: source not recorded
    op.add_column("scores", sa.Column("source", sa.String(10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("source")
