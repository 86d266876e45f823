"""A job's images dropped at its end are marked so, whichever of its images were uploads.

The image sweep found jobs by `image_key` alone, so a job whose first image was a
reference and whose later images were uploads kept those uploads. It now finds every
ended job that does not keep its images and still names some (`image_key` or
`extra_images`), and marks each once its objects are gone.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OLD = "NOT keep_image AND image_key IS NOT NULL AND finished_at IS NOT NULL"
NEW = ("NOT keep_image AND NOT images_dropped AND finished_at IS NOT NULL "
       "AND (image_key IS NOT NULL OR extra_images IS NOT NULL)")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as table:
        table.add_column(sa.Column("images_dropped", sa.Boolean(), nullable=False,
                                   server_default=sa.text("false")))
    op.drop_index("ix_jobs_image_drop", table_name="jobs")
    op.create_index("ix_jobs_image_drop", "jobs", ["finished_at"],
                    postgresql_where=sa.text(NEW), sqlite_where=sa.text(NEW))


def downgrade() -> None:
    op.drop_index("ix_jobs_image_drop", table_name="jobs")
    with op.batch_alter_table("jobs") as table:
        table.drop_column("images_dropped")
    op.create_index("ix_jobs_image_drop", "jobs", ["finished_at"],
                    postgresql_where=sa.text(OLD), sqlite_where=sa.text(OLD))
