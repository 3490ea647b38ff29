"""The three ordered scores of a catalog image under a model (safe, suggestive, explicit;
spritesafe.levels), beside `score`, the deployment's P(nsfw). Null for rows scored before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

COLUMNS = ("score_safe", "score_suggestive", "score_explicit")


def upgrade() -> None:
    with op.batch_alter_table("model_scores") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_scores") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
