"""The first review schema: reviewers, batches, items, leases, the decision log, events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviewers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(80), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "review_batches",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("overlap", sa.Integer, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_table(
        "review_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.String(80), sa.ForeignKey("review_batches.id"), nullable=False, index=True),
        sa.Column("pair_id", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("is_gold", sa.Boolean, nullable=False),
        sa.Column("gold_answer", sa.String(10), nullable=True),
        sa.Column("standing", sa.Integer, nullable=False),
        sa.UniqueConstraint("batch_id", "pair_id"),
    )
    op.create_table(
        "review_leases",
        sa.Column("item_id", sa.Integer, sa.ForeignKey("review_items.id"), primary_key=True),
        sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("reviewers.id"), primary_key=True),
        sa.Column("left", sa.String(10), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "review_decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("review_items.id"), nullable=False, index=True),
        sa.Column("reviewer", sa.String(80), nullable=False, index=True),
        sa.Column("decision", sa.String(10), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("left", sa.String(10), nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("automatic", sa.Boolean, nullable=False),
        sa.Column("undoes", sa.Integer, nullable=True, index=True),
        sa.Column("app_version", sa.String(40), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_review_decisions_reviewer_item", "review_decisions", ["reviewer", "item_id"])
    op.create_table(
        "review_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("review_events", "review_decisions", "review_leases", "review_items", "review_batches", "reviewers"):
        op.drop_table(table)
