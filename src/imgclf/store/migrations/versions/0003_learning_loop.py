"""The learning loop: jobs can be cancelled and say who started them (a person or the
automatic retraining policy) and why.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("trigger", sa.String(16)))
        batch.add_column(sa.Column("reason", sa.Text))
        batch.add_column(sa.Column("cancel_requested_at", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cancel_requested_at")
        batch.drop_column("reason")
        batch.drop_column("trigger")
