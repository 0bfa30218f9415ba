"""The shape of the tensor holding each super weight, which a restore file carries.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

New nullable column `super_weights.tensor_shape` (JSON text, e.g. `[576, 1536]`): the stored
tensor's shape, in the layout `tensor_index` indexes. `superweights apply-restore` refuses a
checkpoint whose tensor has another shape, so a restore file needs it. Rows written before stay
NULL: the shape cannot be told from what they hold (transposed layouts, per-layer widths, the
experts of a fused tensor); a new scan of the model records it.

Downgrade: the column goes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("super_weights") as batch:
        batch.add_column(sa.Column("tensor_shape", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("super_weights", "tensor_shape")  # no batch copy: see 0003's downgrade
