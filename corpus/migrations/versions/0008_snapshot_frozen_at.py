"""When a snapshot was last frozen: a re-freeze of unchanged data makes it the latest again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("frozen_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE snapshots SET frozen_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("frozen_at")
