"""Tasks remember the nodes their runs failed on (poison inputs, bad nodes).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

``tasks.failed_nodes``: a JSON list of node ids, each once. Nullable: rows written before
this revision hold NULL, which the store reads as "none recorded".
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``tasks.failed_nodes``."""
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("failed_nodes", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop ``tasks.failed_nodes``."""
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("failed_nodes")
