"""mislabel report: calibrated label-error probabilities and the expected error count

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 23:55:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label_error_prob", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("suggested_prob", sa.Float(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expected_label_errors", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("expected_label_errors")
    with op.batch_alter_table("job_points", schema=None) as batch_op:
        batch_op.drop_column("suggested_prob")
        batch_op.drop_column("label_error_prob")
