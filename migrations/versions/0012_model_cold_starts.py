"""Each model's last measured cold start: from a worker process's start to its first claim.

A model scaled to zero has no worker row to read it from, and that is when a queued job's
estimate needs it.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_cold_starts",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_cold_starts")
