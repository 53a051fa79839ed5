"""Nodes keep what they cost: their price per hour and the instance it comes from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

``nodes.price_per_hour``: dollars per node-hour the manager priced the node at (the class's
``price_per_hour`` on demand, the spot price at launch for a spot instance); NULL where
unknown, and in rows written before this revision. ``nodes.instance_type``, ``zone`` and
``lifecycle`` (``spot`` or ``on-demand``): what the node read from the EC2 instance
metadata service; NULL off EC2.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``nodes.price_per_hour``, ``instance_type``, ``zone`` and ``lifecycle``."""
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("price_per_hour", sa.Double(), nullable=True))
        batch.add_column(sa.Column("instance_type", sa.String(64), nullable=True))
        batch.add_column(sa.Column("zone", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lifecycle", sa.String(16), nullable=True))


def downgrade() -> None:
    """Drop the columns :func:`upgrade` added."""
    with op.batch_alter_table("nodes") as batch:
        for column in ("lifecycle", "zone", "instance_type", "price_per_hour"):
            batch.drop_column(column)
