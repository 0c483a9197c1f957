"""Alembic migrations of the catalog schema (run by `Catalog.upgrade()`)."""
