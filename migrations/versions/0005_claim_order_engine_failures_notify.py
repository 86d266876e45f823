"""Bulk claims in priority order, engine-failure counts, and a NOTIFY when a job ends.

- `enqueued_at` becomes `runnable_at`: workers claim queued jobs from Postgres in priority
  order, and a retry waits by setting this into the future.
- `engine_failures`: engine crashes a job was present at; at two it runs alone.
- A trigger NOTIFYs `vlmq_job_terminal` with the job id when a job reaches a terminal
  status, so long polls wake at once (Postgres only; SQLite polls).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_QUEUED = sa.text("status = 'queued'")
_NOTIFY_FUNCTION = """
CREATE FUNCTION vlmq_notify_job_terminal() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('vlmq_job_terminal', NEW.id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
_NOTIFY_TRIGGER = """
CREATE TRIGGER jobs_notify_terminal
AFTER UPDATE OF status ON jobs
FOR EACH ROW
WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled', 'expired')
      AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION vlmq_notify_job_terminal()
"""


def upgrade() -> None:
    op.drop_index("ix_jobs_model_status_enqueued", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("enqueued_at", new_column_name="runnable_at")
        batch.add_column(
            sa.Column("engine_failures", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_index(
        "ix_jobs_claim", "jobs", ["model", "priority", "created_at"],
        postgresql_where=_QUEUED, sqlite_where=_QUEUED,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NOTIFY_FUNCTION)
        op.execute(_NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobs_notify_terminal ON jobs")
        op.execute("DROP FUNCTION IF EXISTS vlmq_notify_job_terminal()")
    op.drop_index("ix_jobs_claim", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("engine_failures")
        batch.alter_column("runnable_at", new_column_name="enqueued_at")
    op.create_index("ix_jobs_model_status_enqueued", "jobs", ["model", "status", "enqueued_at"])
