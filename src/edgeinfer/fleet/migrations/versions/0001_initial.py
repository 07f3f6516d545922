"""The first fleet schema: enrollment tokens, devices, reports, merged sketches.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER


def upgrade() -> None:
    op.create_table(
        "enroll_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("uses_left", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("token_id", sa.String(16), sa.ForeignKey("enroll_tokens.id")),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("last_counter", sa.BigInteger(), nullable=False),
        sa.Column("last_report_at", sa.DateTime(timezone=True)),
        sa.Column("hardware_class", sa.String(128), nullable=False),
        sa.Column("hardware", sa.JSON(), nullable=False),
        sa.Column("agent_device_id", sa.String(128)),
        sa.Column("model", sa.String(128)),
        sa.Column("active_version", sa.Integer()),
        sa.Column("bundle_sha256", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
    )
    op.create_table(
        "reports",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(32), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("bundle_sha256", sa.String(64)),
        sa.Column("result", sa.String(16)),
        sa.Column("signed_text", sa.Text(), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
        sa.UniqueConstraint("device_id", "counter", name="uq_reports_device_counter"),
    )
    op.create_index("ix_reports_device_id", "reports", ["device_id"])
    op.create_table(
        "sketches",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("hardware_class", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(80), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("kll", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model", "version", "hardware_class", "metric", name="uq_sketches_key"),
    )


def downgrade() -> None:
    op.drop_table("sketches")
    op.drop_index("ix_reports_device_id", table_name="reports")
    op.drop_table("reports")
    op.drop_table("devices")
    op.drop_table("enroll_tokens")
