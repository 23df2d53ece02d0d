"""Feedback once per prediction, and whether it came with the admin token (``trusted``).

Earlier duplicates keep only their latest row; the feedback accuracy counts trusted rows.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.execute(
        "DELETE FROM feedback WHERE id NOT IN "
        "(SELECT latest FROM (SELECT MAX(id) AS latest FROM feedback GROUP BY prediction_id) kept)"
    )
    with op.batch_alter_table("feedback") as table:
        table.add_column(
            sa.Column("trusted", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_index("feedback_once", "feedback", ["prediction_id"], unique=True)


def downgrade() -> None:
    op.drop_index("feedback_once", "feedback")
    with op.batch_alter_table("feedback") as table:
        table.drop_column("trusted")
