"""Realtime: access-change notifications from the management tables, and a usage counter for
events delivered to subscriptions.

A trigger tells every server process (LISTEN tenantry_access, app.realtime.hub) when who may do
what in a tenant changed — memberships, API tokens, a tenant's status or place in the tree, a
user disabled, a login session ended — so live subscriptions are checked again at once instead
of at their next periodic check. NOTIFY is sent at commit only, and identical payloads of one
transaction are folded into one by PostgreSQL. Columns that change often without changing
access (API tokens' last use, a tenant's schema version) do not fire it.

Revision ID: m0016
Revises: m0015
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0016"
down_revision: str | None = "m0015"
branch_labels: str | None = None
depends_on: str | None = None

FUNCTION = """
CREATE FUNCTION tenantry.access_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('tenantry_access', 'tenant:' || r.id || ':' || TG_OP);
    ELSIF TG_TABLE_NAME = 'users' THEN
        PERFORM pg_notify('tenantry_access', 'user:' || r.id);
    ELSIF TG_TABLE_NAME = 'refresh_tokens' THEN
        PERFORM pg_notify('tenantry_access', 'user:' || r.user_id);
    ELSIF TG_TABLE_NAME = 'memberships' THEN
        PERFORM pg_notify('tenantry_access', 'tenant:' || r.tenant_id);
        PERFORM pg_notify('tenantry_access', 'user:' || r.user_id);
    ELSE
        PERFORM pg_notify('tenantry_access', 'tenant:' || r.tenant_id);
    END IF;
    RETURN NULL;
END $$
"""

# (table, events): what changes access there.
TRIGGERS = (
    ("memberships", "INSERT OR UPDATE OR DELETE"),
    ("api_tokens", "UPDATE OF revoked_at, permissions, expires_at OR DELETE"),
    ("tenants", "INSERT OR UPDATE OF status, parent_id, path, domain, company, kind, parent_access, "
                "allow_create_tenants, contact_name, contact_email, custom_properties, deleted_at OR DELETE"),
    ("users", "UPDATE OF disabled_at OR DELETE"),
    ("refresh_tokens", "UPDATE OF revoked_at OR DELETE"),
)


def upgrade() -> None:
    op.execute(FUNCTION)
    for table, events in TRIGGERS:
        op.execute(f"CREATE TRIGGER {table}_access_changed AFTER {events} ON tenantry.{table} "
                   f"FOR EACH ROW EXECUTE FUNCTION tenantry.access_changed()")
    op.add_column("usage_daily", sa.Column("subscription_event_count", sa.BigInteger(), nullable=False,
                                           server_default="0"), schema="tenantry")


def downgrade() -> None:
    op.drop_column("usage_daily", "subscription_event_count", schema="tenantry")
    for table, _events in TRIGGERS:
        op.execute(f"DROP TRIGGER {table}_access_changed ON tenantry.{table}")
    op.execute("DROP FUNCTION tenantry.access_changed()")
