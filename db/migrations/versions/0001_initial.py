"""Initial catalog schema: models, scans, layer_stats, super_weights, ablations.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _scan_id(table: str) -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=f"fk_{table}_scan_id_scans", ondelete="CASCADE"),
    ]


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("repo_id", sa.String(length=255), nullable=True),
        sa.Column("revision", sa.String(length=255), nullable=True),
        sa.Column("family", sa.String(length=255), nullable=True),
        sa.Column("architecture", sa.String(length=255), nullable=True),
        sa.Column("model_type", sa.String(length=255), nullable=True),
        sa.Column("num_parameters", sa.BigInteger(), nullable=True),
        sa.Column("num_layers", sa.Integer(), nullable=True),
        sa.Column("hidden_size", sa.Integer(), nullable=True),
        sa.Column("intermediate_size", sa.Integer(), nullable=True),
        sa.Column("dtype", sa.String(length=255), nullable=True),
        sa.Column("format", sa.String(length=255), nullable=True),
        sa.Column("quantization", sa.String(length=255), nullable=True),
        sa.Column("license", sa.String(length=255), nullable=True),
        sa.Column("base_model", sa.String(length=255), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("downloads", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("source", "revision", name="uq_models_source_revision"),
    )
    for column in ("base_model", "family", "repo_id"):
        op.create_index(f"ix_models_{column}", "models", [column])

    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dtype", sa.String(length=255), nullable=True),
        sa.Column("environment", sa.JSON(), nullable=True),
        sa.Column("device", sa.String(length=255), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.CheckConstraint("status IN ('ok', 'failed')", name="ck_scans_status"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_scans_model_id_models", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_scans"),
        sa.UniqueConstraint("model_id", "config_hash", name="uq_scans_model_id_config_hash"),
    )
    op.create_index("ix_scans_finished_at", "scans", ["finished_at"])
    op.create_index("ix_scans_status", "scans", ["status"])

    op.create_table(
        "layer_stats",
        *_scan_id("layer_stats"),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("in_max", sa.Double(), nullable=False),
        sa.Column("in_channel", sa.Integer(), nullable=False),
        sa.Column("out_max", sa.Double(), nullable=False),
        sa.Column("out_channel", sa.Integer(), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("spike", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_layer_stats_scan_id", "layer_stats", ["scan_id"])

    op.create_table(
        "super_weights",
        *_scan_id("super_weights"),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("param", sa.String(length=1024), nullable=False),
        sa.Column("expert", sa.Integer(), nullable=True),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("col", sa.Integer(), nullable=False),
        sa.Column("tensor_index", sa.JSON(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("input_activation", sa.Double(), nullable=False),
        sa.Column("output_activation", sa.Double(), nullable=False),
        sa.Column("share", sa.Double(), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=32), nullable=False),
        sa.Column("ppl_ratio", sa.Double(), nullable=True),
    )
    for column in ("layer", "scan_id", "verdict"):
        op.create_index(f"ix_super_weights_{column}", "super_weights", [column])

    op.create_table(
        "ablations",
        *_scan_id("ablations"),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("ppl", sa.Double(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("ratio", sa.Double(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("stopword_mass", sa.Double(), nullable=True),
    )
    op.create_index("ix_ablations_scan_id", "ablations", ["scan_id"])


def downgrade() -> None:
    for table in ("ablations", "super_weights", "layer_stats", "scans", "models"):
        op.drop_table(table)  # drops its indexes too
