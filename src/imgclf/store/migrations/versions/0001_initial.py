"""The first schema: prediction log, feedback, jobs (as the store made it before migrations).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("model_version", sa.String(32)),
        sa.Column("label", sa.String(128)),
        sa.Column("confidence", sa.Float),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("image_sha256", sa.String(64)),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("format", sa.String(16)),
        sa.Column("bytes", sa.Integer),
        sa.Column("brightness", sa.Float),
        sa.Column("contrast", sa.Float),
        sa.Column("error", sa.Text),
    )
    op.create_index("predictions_time", "predictions", ["created_at"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prediction_id", sa.String(64), sa.ForeignKey("predictions.id"), nullable=False),
        sa.Column("true_label", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("pid", sa.Integer),
        sa.Column("run_dir", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("feedback")
    op.drop_table("predictions")
