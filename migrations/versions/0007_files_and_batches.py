"""Files and batches; jobs may be lines of a batch and may give their image by reference;
webhook deliveries may carry a batch's event instead of a job's.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_IMAGE_COLUMNS = {
    "image_key": sa.String(length=300),
    "image_sha256": sa.String(length=64),
    "image_bytes": sa.Integer(),
    "image_format": sa.String(length=16),
    "image_width": sa.Integer(),
    "image_height": sa.Integer(),
}


def _timestamp(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("tenant_id", sa.String(length=64),
                  sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("filename", sa.String(length=512), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("object_key", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )
    op.create_index("ix_files_tenant_created", "files", ["tenant_id", "created_at", "id"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("tenant_id", sa.String(length=64),
                  sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("input_file_id", sa.String(length=40), nullable=False),
        sa.Column("completion_window", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("output_file_id", sa.String(length=40), nullable=True),
        sa.Column("error_file_id", sa.String(length=40), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_events", sa.JSON(), nullable=True),
        sa.Column("lines_expanded", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        _timestamp("lease_expires_at"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        _timestamp("expires_at", nullable=False),
        *(_timestamp(f"{step}_at") for step in (
            "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
            "cancelled",
        )),
    )
    op.create_index("ix_batches_tenant_created", "batches", ["tenant_id", "created_at", "id"])
    op.create_index("ix_batches_status", "batches", ["status"])

    with op.batch_alter_table("jobs") as batch:
        for name, type_ in _IMAGE_COLUMNS.items():
            batch.alter_column(name, existing_type=type_, nullable=True)
        batch.add_column(sa.Column("image_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("batch_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("batch_line", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("custom_id", sa.String(length=512), nullable=True))
        batch.create_foreign_key("fk_jobs_batch_id_batches", "batches", ["batch_id"], ["id"],
                                 ondelete="CASCADE")
        batch.create_unique_constraint("uq_jobs_batch_line", ["batch_id", "batch_line"])
    op.create_index("ix_jobs_batch_status", "jobs", ["batch_id", "status"])

    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("job_id", existing_type=sa.Uuid(), nullable=True)
        batch.add_column(sa.Column("batch_id", sa.String(length=40), nullable=True))
        batch.create_foreign_key("fk_webhook_deliveries_batch_id_batches", "batches",
                                 ["batch_id"], ["id"], ondelete="CASCADE")
    op.create_index("ix_webhook_deliveries_batch", "webhook_deliveries", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_batch", table_name="webhook_deliveries")
    op.execute("DELETE FROM webhook_deliveries WHERE job_id IS NULL")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_constraint("fk_webhook_deliveries_batch_id_batches", type_="foreignkey")
        batch.drop_column("batch_id")
        batch.alter_column("job_id", existing_type=sa.Uuid(), nullable=False)
    op.drop_index("ix_jobs_batch_status", table_name="jobs")
    op.execute("DELETE FROM jobs WHERE image_key IS NULL")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_batch_line", type_="unique")
        batch.drop_constraint("fk_jobs_batch_id_batches", type_="foreignkey")
        for column in ("custom_id", "batch_line", "batch_id", "image_url"):
            batch.drop_column(column)
        for name, type_ in _IMAGE_COLUMNS.items():
            batch.alter_column(name, existing_type=type_, nullable=False)
    op.drop_index("ix_batches_status", table_name="batches")
    op.drop_index("ix_batches_tenant_created", table_name="batches")
    op.drop_table("batches")
    op.drop_index("ix_files_tenant_created", table_name="files")
    op.drop_table("files")
