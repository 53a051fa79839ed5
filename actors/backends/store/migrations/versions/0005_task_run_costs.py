"""Tasks keep what all their runs cost, not only their latest run's.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

``tasks.cost_dollars``: dollars of every run of the task recorded so far, each at its node's
price when recorded. Filled here from the one run a row kept until now (its latest: run
seconds x its node's price / 3600 / its node's workers), so a task's cost is what it was
before this revision. ``tasks.runs_seen``: the runs recorded, ``[node, worker, started_at]``
each, so a run reported twice is counted once; NULL in rows written before this revision.
``unpriced_runs``: runs recorded while their node's price was unknown, priced when read.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Add ``tasks.cost_dollars`` (filled) and ``runs_seen``, and create ``unpriced_runs``."""
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("cost_dollars", sa.Double(), server_default="0", nullable=False))
        batch.add_column(sa.Column("runs_seen", sa.JSON(), nullable=True))
    _fill_costs()
    op.create_table(
        "unpriced_runs",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id", "stage", "part"],
            ["tasks.job_id", "tasks.stage", "tasks.part"],
            name="fk_unpriced_runs_job_id_stage_part_tasks",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_unpriced_runs"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_index(
        "ix_unpriced_runs_job_id_stage_part", "unpriced_runs", ["job_id", "stage", "part"]
    )


def _fill_costs() -> None:
    # The formula the store read costs with before this revision (costs.py at 0004), as
    # one UPDATE with a correlated subquery: valid on SQLite, PostgreSQL and MySQL alike.
    op.execute(
        """
        UPDATE tasks SET cost_dollars = COALESCE((
            SELECT (tasks.finished_at - tasks.started_at) * nodes.price_per_hour / 3600.0
                / CASE WHEN nodes.workers > 0 THEN nodes.workers ELSE 1 END
            FROM nodes WHERE nodes.id = tasks.node_id
        ), 0)
        WHERE tasks.started_at IS NOT NULL AND tasks.finished_at > tasks.started_at
        """
    )


def downgrade() -> None:
    """Drop ``unpriced_runs`` and the columns :func:`upgrade` added."""
    op.drop_table("unpriced_runs")  # with its index
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("runs_seen")
        batch.drop_column("cost_dollars")
