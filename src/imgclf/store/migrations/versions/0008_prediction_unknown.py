"""Whether the model answered "unknown" (``imgclf.model.novelty``): the unknown rate is a
drift signal.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as table:
        table.add_column(sa.Column("unknown", sa.Boolean))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as table:
        table.drop_column("unknown")
