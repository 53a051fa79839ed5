"""Alembic migrations of the analytics store."""
