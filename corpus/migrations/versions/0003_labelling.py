"""Labelling bookkeeping: budget selection, sample number and latency on labels; label errors.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.add_column(sa.Column("selection", sa.String(32), nullable=True))
        batch.add_column(sa.Column("sample", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("latency_ms", sa.Float(), nullable=True))
    op.create_table(
        "label_errors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("labeler", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_digest", sa.String(100), nullable=False),
        sa.Column("rubric_version", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name="fk_label_errors_image_id_images"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_label_errors"),
    )
    op.create_index("ix_label_errors_image_id", "label_errors", ["image_id"])


def downgrade() -> None:
    op.drop_index("ix_label_errors_image_id", table_name="label_errors")
    op.drop_table("label_errors")
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("latency_ms")
        batch.drop_column("sample")
        batch.drop_column("selection")
