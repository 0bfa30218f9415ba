"""The catalog schema (SQLAlchemy 2.x ORM). Changing it needs an Alembic migration in db/migrations.

One row per model revision (`models`), one per scan configuration of it (`scans`), and the scan's
per-layer statistics, super weights and ablations. Children go with their scan (ON DELETE CASCADE):
replacing a scan is deleting it and inserting the new one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, DateTime, Double, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.schema import STATUS_FAILED, STATUS_OK

# Deterministic constraint names, equal on SQLite and PostgreSQL, so migrations can address them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}



class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, float: Double, int: Integer, str: String(255),
                           datetime: DateTime(timezone=True)}


def _scan_fk() -> Mapped[int]:
    return mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)


class Model(Base):
    """A model at one revision. Facts are null when only failed scans (load errors) are known.

    One row per set of weights: a scan of weights already catalogued (the same `fingerprint`
    under another path, name or repo) is saved to their row; a local source's revision is named
    by its fingerprint (`sha256:...`), so changed weights under one path are a new row."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("source", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    repo_id: Mapped[str | None] = mapped_column(index=True)
    revision: Mapped[str | None]
    family: Mapped[str | None] = mapped_column(index=True)
    architecture: Mapped[str | None]
    model_type: Mapped[str | None]
    num_parameters: Mapped[int | None] = mapped_column(BigInteger)
    num_layers: Mapped[int | None]
    hidden_size: Mapped[int | None]
    intermediate_size: Mapped[int | None]
    dtype: Mapped[str | None]
    format: Mapped[str | None]
    quantization: Mapped[str | None]
    license: Mapped[str | None]
    base_model: Mapped[str | None] = mapped_column(index=True)
    tags: Mapped[list[Any] | None]
    downloads: Mapped[int | None] = mapped_column(BigInteger)
    name: Mapped[str | None]  # what the model calls itself (GGUF general.name, the repo's name)
    named_from: Mapped[str | None]  # where the name came from; "file name" is a guess
    organization: Mapped[str | None] = mapped_column(index=True)
    size_label: Mapped[str | None]
    fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)  # sha256 of the weight files

    scans: Mapped[list[Scan]] = relationship(back_populates="model", cascade="all, delete-orphan", passive_deletes=True)


class Scan(Base):
    """One scan of a model under one configuration; `status` 'failed' keeps the error, no children."""

    __tablename__ = "scans"
    __table_args__ = (
        UniqueConstraint("model_id", "config_hash"),
        CheckConstraint(f"status IN ('{STATUS_OK}', '{STATUS_FAILED}')", name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    config_hash: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime] = mapped_column(index=True)
    dtype: Mapped[str | None]  # the dtype this scan loaded (models.dtype is the latest scan's)
    environment: Mapped[dict[str, Any] | None]  # software versions and device
    device: Mapped[str | None]
    timings: Mapped[dict[str, Any] | None]
    summary: Mapped[dict[str, Any] | None]  # derived figures of the scan (ScanResult.summary)

    model: Mapped[Model] = relationship(back_populates="scans")
    layers: Mapped[list[LayerStatRow]] = relationship(order_by="LayerStatRow.id", cascade="all, delete-orphan", passive_deletes=True)
    super_weights: Mapped[list[SuperWeightRow]] = relationship(order_by="SuperWeightRow.id", cascade="all, delete-orphan",
                                                               passive_deletes=True)
    ablations: Mapped[list[AblationRow]] = relationship(order_by="AblationRow.id", cascade="all, delete-orphan", passive_deletes=True)


class LayerStatRow(Base):
    __tablename__ = "layer_stats"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = _scan_fk()
    layer: Mapped[int]
    in_max: Mapped[float]
    in_channel: Mapped[int]
    out_max: Mapped[float]
    out_channel: Mapped[int]
    token: Mapped[int]
    spike: Mapped[bool]


class SuperWeightRow(Base):
    __tablename__ = "super_weights"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = _scan_fk()
    layer: Mapped[int] = mapped_column(index=True)
    param: Mapped[str] = mapped_column(String(1024))
    expert: Mapped[int | None]
    row: Mapped[int]
    col: Mapped[int]
    tensor_index: Mapped[list[Any]]
    tensor_shape: Mapped[list[Any] | None]  # the stored tensor's shape; NULL for scans before revision 0004
    value: Mapped[float]
    input_activation: Mapped[float]
    output_activation: Mapped[float]
    share: Mapped[float]
    token: Mapped[int]
    iteration: Mapped[int]
    verdict: Mapped[str] = mapped_column(String(32), index=True)  # confirmed | rejected | inconclusive | untested
    ppl_ratio: Mapped[float | None]  # its ablation row's paired ratio (unitless)
    ppl_ratio_low: Mapped[float | None]  # and that row's 95% interval
    ppl_ratio_high: Mapped[float | None]


class AblationRow(Base):
    __tablename__ = "ablations"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = _scan_fk()
    name: Mapped[str]
    ppl: Mapped[float]  # perplexity on this row's tokens
    tokens: Mapped[int]  # predicted tokens evaluated
    ratio: Mapped[float | None]  # ppl / baseline_ppl
    detail: Mapped[str] = mapped_column(Text)
    stopword_mass: Mapped[float | None]
    kind: Mapped[str | None] = mapped_column(String(32))  # catalog.result.Kind
    baseline_ppl: Mapped[float | None]  # the baseline's perplexity on exactly this row's tokens
    ratio_low: Mapped[float | None]  # 95% interval of the ratio
    ratio_high: Mapped[float | None]
    windows: Mapped[int | None]  # evaluation windows covered

