"""Self-supervised backbones pretrained on the catalog.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pretrains",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("arch", sa.String(100), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("preprocess", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_pretrains"),
    )
    op.create_index("ix_pretrains_status", "pretrains", ["status"])


def downgrade() -> None:
    op.drop_index("ix_pretrains_status", table_name="pretrains")
    op.drop_table("pretrains")
