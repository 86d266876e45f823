"""Create the workers table (live worker registry).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("engine", sa.String(length=32), nullable=False),
        sa.Column("queue", sa.String(length=300), nullable=False),
        sa.Column("max_batch_size", sa.Integer(), nullable=False),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "last_seen_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_workers_model_seen", "workers", ["model", "last_seen_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_workers_model_seen", table_name="workers")
    op.drop_table("workers")
