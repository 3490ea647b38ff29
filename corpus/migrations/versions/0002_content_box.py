"""Record the content box the perceptual hashes are taken of.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("content_width", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("content_height", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("content_height")
        batch.drop_column("content_width")
