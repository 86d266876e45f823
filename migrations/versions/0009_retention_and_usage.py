"""Retention and deletion (what is stripped and when), per-job image removal, file expiry,
and the usage ledger.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COUNTERS = ("accepted", "succeeded", "failed", "cancelled", "expired", "images",
             "prompt_tokens", "image_tokens", "completion_tokens")


def upgrade() -> None:
    with op.batch_alter_table("tenants") as table:
        table.add_column(sa.Column("retention_seconds", sa.Integer(), nullable=True))
        table.add_column(sa.Column("keep_images", sa.Boolean(), nullable=True))
    with op.batch_alter_table("files") as table:
        table.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_files_expires", "files", ["expires_at"],
                    postgresql_where=sa.text("purged_at IS NULL AND expires_at IS NOT NULL"),
                    sqlite_where=sa.text("purged_at IS NULL AND expires_at IS NOT NULL"))
    op.create_index("ix_files_purged", "files", ["purged_at"],
                    postgresql_where=sa.text("purged_at IS NOT NULL"),
                    sqlite_where=sa.text("purged_at IS NOT NULL"))
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("output_expires_after_seconds", sa.Integer(),
                                   nullable=True))
        table.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs") as table:
        table.add_column(sa.Column("keep_image", sa.Boolean(), nullable=False,
                                   server_default=sa.text("true")))
        table.add_column(sa.Column("image_tokens", sa.Integer(), nullable=True))
        table.add_column(sa.Column("engine_seconds", sa.Float(), nullable=True))
        table.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_retention", "jobs", ["tenant_id", "finished_at"],
                    postgresql_where=sa.text("finished_at IS NOT NULL AND purged_at IS NULL"),
                    sqlite_where=sa.text("finished_at IS NOT NULL AND purged_at IS NULL"))
    op.create_index("ix_jobs_purged", "jobs", ["purged_at"],
                    postgresql_where=sa.text("purged_at IS NOT NULL"),
                    sqlite_where=sa.text("purged_at IS NOT NULL"))
    image_drop = ("NOT keep_image AND image_key IS NOT NULL AND finished_at IS NOT NULL")
    op.create_index("ix_jobs_image_drop", "jobs", ["finished_at"],
                    postgresql_where=sa.text(image_drop), sqlite_where=sa.text(image_drop))
    op.create_table(
        "usage_hours",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("shard", sa.Integer(), primary_key=True),
        *(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")
          for name in _COUNTERS),
        sa.Column("engine_seconds", sa.Float(), nullable=False, server_default="0"),
    )
    op.create_index("ix_usage_hours_hour", "usage_hours", ["hour"])


def downgrade() -> None:
    op.drop_index("ix_usage_hours_hour", table_name="usage_hours")
    op.drop_table("usage_hours")
    for index in ("ix_jobs_image_drop", "ix_jobs_purged", "ix_jobs_retention"):
        op.drop_index(index, table_name="jobs")
    with op.batch_alter_table("jobs") as table:
        for column in ("purged_at", "engine_seconds", "image_tokens", "keep_image"):
            table.drop_column(column)
    with op.batch_alter_table("batches") as table:
        table.drop_column("purged_at")
        table.drop_column("output_expires_after_seconds")
    op.drop_index("ix_files_purged", table_name="files")
    op.drop_index("ix_files_expires", table_name="files")
    with op.batch_alter_table("files") as table:
        table.drop_column("purged_at")
        table.drop_column("expires_at")
    with op.batch_alter_table("tenants") as table:
        table.drop_column("keep_images")
        table.drop_column("retention_seconds")
