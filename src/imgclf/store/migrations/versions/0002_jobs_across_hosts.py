"""Jobs run by workers on any host: the host, progress and log tail live in the database, and
at most one job of a kind is live (a partial unique index).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
LIVE = sa.text("state IN ('queued', 'running')")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("host", sa.String(255)))
        batch.add_column(sa.Column("progress", sa.Text))
        batch.add_column(sa.Column("log_tail", sa.Text))
    op.create_index(
        "one_live_job", "jobs", ["kind"], unique=True, sqlite_where=LIVE, postgresql_where=LIVE
    )


def downgrade() -> None:
    op.drop_index("one_live_job", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("log_tail")
        batch.drop_column("progress")
        batch.drop_column("host")
