"""The learning loop: jobs can be cancelled and say why they were started; predictions are
looked up by image hash (the retained images) and by confidence (the review queue).

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
    op.create_index("predictions_confidence", "predictions", ["confidence"])


def downgrade() -> None:
    op.drop_index("predictions_confidence", "predictions")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cancel_requested_at")
        batch.drop_column("reason")
        batch.drop_column("trigger")
