"""Group screening verdicts: which cell of which contact sheet showed which sprite, flagged
or not. Never training labels: flagged cells are labelled one by one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "screenings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("sheet", sa.String(16), nullable=False),
        sa.Column("grid", sa.Integer(), nullable=False),
        sa.Column("cell", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_digest", sa.String(100), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_screenings_image_id_images"),
        sa.PrimaryKeyConstraint("id", name="pk_screenings"),
    )
    op.create_index("ix_screenings_image_id", "screenings", ["image_id"])
    op.create_index("ix_screenings_key", "screenings", ["model_digest", "version", "grid"])


def downgrade() -> None:
    op.drop_index("ix_screenings_key", table_name="screenings")
    op.drop_index("ix_screenings_image_id", table_name="screenings")
    op.drop_table("screenings")
