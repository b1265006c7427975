"""job options: evaluation depth and the mislabel report's precision target

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evaluation", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("flag_precision", sa.Float(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite's own DROP COLUMN (3.35+): a batch rebuild of jobs would rename the table
        # under the reporting views (0004), which SQLite refuses
        op.execute("ALTER TABLE jobs DROP COLUMN flag_precision")
        op.execute("ALTER TABLE jobs DROP COLUMN evaluation")
        return
    op.drop_column("jobs", "flag_precision")
    op.drop_column("jobs", "evaluation")
