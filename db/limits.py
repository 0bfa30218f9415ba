"""What one user query may take: its own module, so that the `sql` command's option defaults
cost no import of DuckDB (`db.query`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueryLimits:
    """What one user query may take; None: no limit."""

    timeout: float | None = 60.0  # seconds
    max_rows: int | None = 10_000
