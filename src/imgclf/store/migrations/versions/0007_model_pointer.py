"""The model registry's version numbers and current-model pointer (``imgclf.store.pointer``):
in the database, changed in transactions, rather than under a file lock on the models folder.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("reserved_at", sa.Float, nullable=False),
        sa.Column("reserved_by", sa.String(255)),
    )
    op.create_table(
        "model_pointer",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.String(32)),
        sa.Column("history", sa.Text, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("changed_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_pointer")
    op.drop_table("model_versions")
