"""Models named by what they are: self-declared names and a fingerprint of the weights.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

New columns on `models`: `name`, `named_from`, `organization` (indexed), `size_label` and
`fingerprint` (sha256 of the weight files, indexed). Rows written before are filled where what
they stored says it: a Hub model is named by its repo id (`name` the part after the owner,
`organization` the owner, `named_from` 'hub repo id'), and a Hub source stored as typed with its
revision (`org/name@main`) is renamed to its repo id, as scans now name it, unless that name is
taken at the same revision. Fingerprints stay NULL: the files are not at hand here; the next scan
of a local source under the same path adopts its old row (`db.repository`).

Downgrade: the columns go; renamed sources keep their new name.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = {"name": sa.String(length=255), "named_from": sa.String(length=255), "organization": sa.String(length=255),
           "size_label": sa.String(length=255), "fingerprint": sa.String(length=64)}
INDEXED = ("organization", "fingerprint")
FROM_REPO = "hub repo id"  # catalog.identity.FROM_REPO, as it was when this was written

models = sa.table("models", *(sa.column(c) for c in ("id", "source", "repo_id", "revision", *COLUMNS)))


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        for name, type_ in COLUMNS.items():
            batch.add_column(sa.Column(name, type_, nullable=True))
        for name in INDEXED:
            batch.create_index(f"ix_models_{name}", [name])
    connection = op.get_bind()
    rows = connection.execute(sa.select(models.c.id, models.c.source, models.c.repo_id, models.c.revision)
                              .where(models.c.repo_id.is_not(None))).all()
    taken = {(row.source, row.revision) for row in connection.execute(sa.select(models.c.source, models.c.revision))}
    for row in rows:
        owner, _, name = row.repo_id.partition("/")
        values = {"name": name or row.repo_id, "organization": owner if name else None, "named_from": FROM_REPO}
        if row.source.startswith(f"{row.repo_id}@") and (row.repo_id, row.revision) not in taken:
            values["source"] = row.repo_id
            taken.add((row.repo_id, row.revision))
        connection.execute(models.update().where(models.c.id == row.id).values(values))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch copy: recreating `models` on SQLite
    # drops the old table, which with foreign keys on deletes every scan through ON DELETE CASCADE
    for name in INDEXED:
        op.drop_index(f"ix_models_{name}", table_name="models")
    for name in COLUMNS:
        op.drop_column("models", name)
