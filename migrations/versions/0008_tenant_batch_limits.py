"""Per-tenant limits on batch work and on images by reference; a batch whose work keeps
failing backs off and is retried, then fails alone instead of stalling every batch.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as table:
        table.add_column(sa.Column("max_queued_batch_lines", sa.Integer(), nullable=True))
        table.add_column(sa.Column("max_active_batches", sa.Integer(), nullable=True))
        table.add_column(sa.Column("image_url_prefixes", sa.JSON(), nullable=True))
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("work_failures", sa.Integer(), nullable=False,
                                   server_default="0"))
        table.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as table:
        table.drop_column("retry_at")
        table.drop_column("work_failures")
    with op.batch_alter_table("tenants") as table:
        table.drop_column("image_url_prefixes")
        table.drop_column("max_active_batches")
        table.drop_column("max_queued_batch_lines")
