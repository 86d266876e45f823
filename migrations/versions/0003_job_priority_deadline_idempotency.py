"""Job priority, queue deadline, idempotency key, running lease and enqueue time.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), server_default="5", nullable=False))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch.create_index("ix_jobs_status_lease", ["status", "lease_expires_at"])
        batch.create_index("ix_jobs_model_status_enqueued", ["model", "status", "enqueued_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_model_status_enqueued")
        batch.drop_index("ix_jobs_status_lease")
        batch.drop_column("enqueued_at")
        batch.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch.drop_column("lease_expires_at")
        batch.drop_column("request_sha256")
        batch.drop_column("idempotency_key")
        batch.drop_column("expires_at")
        batch.drop_column("priority")
