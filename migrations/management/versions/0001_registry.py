"""Tenant registry, users, memberships, invitations, refresh tokens, audit log.

Revision ID: m0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "m0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

S = "tenantry"


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("company", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="ACTIVE"),
        sa.Column("parent_id", sa.Text(), sa.ForeignKey(f"{S}.tenants.id"), nullable=True),
        sa.Column("path", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("allow_create_tenants", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("contact_name", sa.Text()),
        sa.Column("contact_email", sa.Text()),
        sa.Column("custom_properties", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("max_devices", sa.BigInteger()),
        sa.Column("max_users", sa.BigInteger()),
        sa.Column("max_subtenants", sa.BigInteger()),
        sa.Column("storage_bytes", sa.BigInteger()),
        sa.Column("requests_per_second", sa.Integer()),
        sa.Column("request_burst", sa.Integer()),
        sa.Column("suspended_from", sa.Text()),
        sa.Column("schema_version", sa.Text()),
        sa.Column("migration_error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("kind IN ('MANAGEMENT', 'ENTERPRISE', 'STANDARD')", name="tenants_kind_check"),
        sa.CheckConstraint("status IN ('ACTIVE', 'SUSPENDED', 'DELETED')", name="tenants_status_check"),
        schema=S,
    )
    op.create_index(
        "tenants_domain_live_key", "tenants", ["domain"], unique=True, schema=S,
        postgresql_where=sa.text("status <> 'DELETED'"),
    )
    op.create_index("tenants_path_idx", "tenants", ["path"], schema=S, postgresql_using="gin")
    op.create_index("tenants_parent_idx", "tenants", ["parent_id"], schema=S)

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid()),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text()),
        sa.Column("display_name", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index("users_email_key", "users", [sa.text("lower(email)")], unique=True, schema=S)

    op.create_table(
        "memberships",
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey(f"{S}.users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey(f"{S}.tenants.id"), primary_key=True),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False, server_default="TENANT"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("scope IN ('TENANT', 'SUBTREE')", name="memberships_scope_check"),
        schema=S,
    )
    op.create_index("memberships_tenant_idx", "memberships", ["tenant_id"], schema=S)

    op.create_table(
        "invitations",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid()),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey(f"{S}.tenants.id"), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("invited_by", sa.Uuid(), sa.ForeignKey(f"{S}.users.id", ondelete="SET NULL")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index("invitations_tenant_idx", "invitations", ["tenant_id"], schema=S)

    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid()),
        sa.Column("family_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey(f"{S}.users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant_id", sa.Text()),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index("refresh_tokens_family_idx", "refresh_tokens", ["family_id"], schema=S)
    op.create_index("refresh_tokens_user_idx", "refresh_tokens", ["user_id"], schema=S)

    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("actor_type", sa.Text(), nullable=False),
        sa.Column("actor_id", sa.Text()),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target", sa.Text()),
        sa.Column("changes", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("request_id", sa.Text()),
        schema=S,
    )
    op.create_index("audit_log_tenant_idx", "audit_log", ["tenant_id", "id"], schema=S)


def downgrade() -> None:
    for table in ("audit_log", "refresh_tokens", "invitations", "memberships", "users", "tenants"):
        op.drop_table(table, schema=S)
