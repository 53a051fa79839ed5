"""Tasks keep what their handler returned (a probe's stream facts, a checksum, ...).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

``tasks.result``: the JSON object the handler of the succeeded run returned. Nullable: a
handler that returns nothing, and rows written before this revision, hold NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``tasks.result``."""
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("result", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop ``tasks.result``."""
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("result")
