"""The catalog: SQL storage of scan results (SQLAlchemy, Alembic) and read-only SQL over it (DuckDB)."""
