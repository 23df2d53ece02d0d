"""Which client sent a prediction, as a keyed hash of its address (never the address itself):
drift counts distinct clients before it may trigger a retrain.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as table:
        table.add_column(sa.Column("client", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as table:
        table.drop_column("client")
