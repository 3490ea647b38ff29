"""Dataset snapshots and trained models.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("rubric_version", sa.String(64), nullable=False),
        sa.Column("labelers", sa.JSON(), nullable=True),
        sa.Column("base_rate", sa.Float(), nullable=False),
        sa.Column("base_rate_source", sa.String(32), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_snapshots"),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("snapshot_id", sa.String(32), nullable=False),
        sa.Column("arch", sa.String(100), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("epochs_done", sa.Integer(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["snapshot_id"], ["snapshots.id"], name="fk_models_snapshot_id_snapshots"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
    )
    op.create_index("ix_models_snapshot_id", "models", ["snapshot_id"])


def downgrade() -> None:
    op.drop_index("ix_models_snapshot_id", table_name="models")
    op.drop_table("models")
    op.drop_table("snapshots")
