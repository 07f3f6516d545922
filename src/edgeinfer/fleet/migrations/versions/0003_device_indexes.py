"""Indexes for the dashboard at fleet scale: devices grouped by model, version and state
(covering, so the overview reads no table rows), and devices by their last report.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_devices_overview",
        "devices",
        ["model", "active_version", "state", "revoked_at", "last_report_at"],
    )
    op.create_index("ix_devices_last_report_at", "devices", ["last_report_at"])


def downgrade() -> None:
    op.drop_index("ix_devices_last_report_at", table_name="devices")
    op.drop_index("ix_devices_overview", table_name="devices")
