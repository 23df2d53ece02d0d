"""Curation of uploads: an audit table of who deleted or renamed uploaded data, and when
(``imgclf.audit``).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "curation_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("new_name", sa.String(255)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("images", sa.Integer),
        sa.Column("batches", sa.Integer),
        sa.Column("detail", sa.Text),
        sa.Column("actor", sa.String(16)),
        sa.Column("client", sa.String(255)),
    )
    op.create_index("curation_audit_time", "curation_audit", ["created_at"])


def downgrade() -> None:
    op.drop_index("curation_audit_time", "curation_audit")
    op.drop_table("curation_audit")
