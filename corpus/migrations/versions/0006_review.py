"""Model scores over the catalog and the review queue.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_scores",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(36), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("out_of_sample", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name="fk_model_scores_image_id_images"
        ),
        sa.PrimaryKeyConstraint("image_id", "model_id", name="pk_model_scores"),
    )
    op.create_table(
        "review_queue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("model_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(100), nullable=True),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name="fk_review_queue_image_id_images"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_review_queue"),
        sa.UniqueConstraint("image_id", "reason", name="uq_review_queue_image_id_reason"),
    )
    op.create_index("ix_review_queue_status_priority", "review_queue", ["status", "priority"])


def downgrade() -> None:
    op.drop_index("ix_review_queue_status_priority", table_name="review_queue")
    op.drop_table("review_queue")
    op.drop_table("model_scores")
