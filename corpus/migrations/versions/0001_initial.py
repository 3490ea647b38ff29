"""Initial catalog: runs, sources, images, source_items, labels.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(1024), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=True),
        sa.Column("cursor", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_ingested_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sources"),
        sa.UniqueConstraint("name", name="uq_sources_name"),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.String(200), nullable=True),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(16), nullable=True),
        sa.Column("mode", sa.String(16), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("has_alpha", sa.Boolean(), nullable=True),
        sa.Column("pixel_scale", sa.Integer(), nullable=True),
        sa.Column("scale_offset_x", sa.Integer(), nullable=True),
        sa.Column("scale_offset_y", sa.Integer(), nullable=True),
        sa.Column("canonical_width", sa.Integer(), nullable=True),
        sa.Column("canonical_height", sa.Integer(), nullable=True),
        sa.Column("palette_size", sa.Integer(), nullable=True),
        sa.Column("canonical_sha256", sa.String(64), nullable=True),
        sa.Column("canon_version", sa.String(16), nullable=True),
        sa.Column("phash", sa.BigInteger(), nullable=True),
        sa.Column("dhash", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reject_reason", sa.String(64), nullable=True),
        sa.Column("reject_detail", sa.Text(), nullable=True),
        sa.Column("duplicate_of", sa.Integer(), nullable=True),
        sa.Column("cluster_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.ForeignKeyConstraint(
            ["duplicate_of"], ["images.id"], name="fk_images_duplicate_of_images"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
        sa.UniqueConstraint("sha256", name="uq_images_sha256"),
    )
    op.create_index("ix_images_canonical_sha256", "images", ["canonical_sha256"])
    op.create_index("ix_images_cluster_id", "images", ["cluster_id"])
    op.create_index("ix_images_status_cluster", "images", ["status", "cluster_id"])
    op.create_table(
        "source_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("locator", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(200), nullable=True),
        sa.Column("etag", sa.String(200), nullable=True),
        sa.Column("last_modified", sa.String(64), nullable=True),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name="fk_source_items_image_id_images"
        ),
        sa.ForeignKeyConstraint(
            ["source_id"], ["sources.id"], name="fk_source_items_source_id_sources"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_source_items"),
        sa.UniqueConstraint("source_id", "locator", name="uq_source_items_source_id_locator"),
    )
    op.create_index("ix_source_items_image_id", "source_items", ["image_id"])
    op.create_index("ix_source_items_status_reason", "source_items", ["status", "reason"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("labeler", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_digest", sa.String(100), nullable=False),
        sa.Column("rubric_version", sa.String(64), nullable=False),
        sa.Column("score_safe", sa.Float(), nullable=True),
        sa.Column("score_suggestive", sa.Float(), nullable=True),
        sa.Column("score_explicit", sa.Float(), nullable=True),
        sa.Column("category", sa.String(16), nullable=True),
        sa.Column("rationale", sa.Text(), nullable=True),
        sa.Column("raw", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_labels_image_id_images"),
        sa.PrimaryKeyConstraint("id", name="pk_labels"),
    )
    op.create_index(
        "ix_labels_key", "labels", ["image_id", "labeler", "model_digest", "rubric_version"]
    )


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_table("source_items")
    op.drop_table("images")
    op.drop_table("sources")
    op.drop_table("runs")
