"""comparison jobs: jobs.methods, jobs.inject_flips, job_method_points

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 01:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("methods", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("inject_flips", sa.Float(), nullable=True))

    op.create_table(
        "job_method_points",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("point_index", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("selected", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_method_points_job_id_jobs"),
            ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "method", "point_index",
                                name=op.f("pk_job_method_points")),
    )


def downgrade() -> None:
    op.drop_table("job_method_points")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("inject_flips")
        batch_op.drop_column("methods")
