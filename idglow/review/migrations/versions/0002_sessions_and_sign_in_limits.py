"""Server-side sessions (signing out ends them) and the counts of failed sign-ins.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column(
            "reviewer_id", sa.Integer, sa.ForeignKey("reviewers.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "review_login_throttle",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", sa.Float, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=False),
        sa.Column("lockouts", sa.Integer, nullable=False),
        sa.Column("last_attempt_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("review_login_throttle")
    op.drop_table("review_sessions")
