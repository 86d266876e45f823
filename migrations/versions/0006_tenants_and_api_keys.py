"""Tenants and API keys; every job belongs to a tenant.

Jobs that exist before this revision go to the tenant `default`, which is also the tenant
of requests on a server started with authentication turned off. Idempotency keys become
unique per tenant.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ACTIVE = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("max_active_jobs", sa.Integer(), nullable=True),
        sa.Column("submits_per_second", sa.Float(), nullable=True),
    )
    op.bulk_insert(tenants, [{"id": "default"}])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("tenant_id", sa.String(length=64),
                  sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant_id"])

    with op.batch_alter_table("jobs") as batch:
        # The server default fills existing rows; it is dropped below, so every new job
        # names its tenant explicitly.
        batch.add_column(sa.Column("tenant_id", sa.String(length=64), nullable=False,
                                   server_default="default"))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("tenant_id", server_default=None)
        batch.create_foreign_key("fk_jobs_tenant_id_tenants", "tenants", ["tenant_id"], ["id"])
        batch.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_jobs_tenant_idempotency_key", ["tenant_id", "idempotency_key"]
        )
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at", "id"])
    op.create_index("ix_jobs_tenant_active", "jobs", ["tenant_id"],
                    postgresql_where=_ACTIVE, sqlite_where=_ACTIVE)


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_active", table_name="jobs")
    op.drop_index("ix_jobs_tenant_created", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_tenant_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch.drop_constraint("fk_jobs_tenant_id_tenants", type_="foreignkey")
        batch.drop_column("tenant_id")
    op.drop_index("ix_api_keys_tenant", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
