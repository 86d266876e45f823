"""Several images per job: the second and later images of a job, in prompt order.

The first image keeps its columns (image_key, image_url, image_sha256, ...), so a job of
one image, and every row written before, reads as it always did.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as table:
        table.add_column(sa.Column("extra_images", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as table:
        table.drop_column("extra_images")
