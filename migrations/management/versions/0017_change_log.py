"""The change log's management side: tenants' lifecycle into their ancestors' logs, webhook
endpoints and their deliveries, standing shares.

A tenant's creation, change (status, place, details) or deletion is an entry of the log of every
strict ancestor (before and after a move): the `tenants` subscription, consumers and webhooks read
it there. A constraint trigger deferred to COMMIT appends it, so the ancestors' log heads (whose
row locks order their writers: tenant migration t0007) are held only while the transaction
commits, and whatever code path changed the row, nothing is missed. Each ancestor's log is written
under that ancestor's own role (the app role is a member of every tenant role), then the role the
transaction had is restored: on Citus a transaction may not touch a placement as two users.

Webhooks and shares live here, not in tenant schemas: their dispatchers find the work of every
tenant in one indexed query.

Revision ID: m0017
Revises: m0016
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "m0017"
down_revision: str | None = "m0016"
branch_labels: str | None = None
depends_on: str | None = None

FUNCTION = """
CREATE FUNCTION tenantry.log_tenant_change() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog AS $$
DECLARE
    r record;
    ancestors text[];
    ancestor text;
    s text;
    was text := current_setting('role');
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    ancestors := r.path;
    IF TG_OP = 'UPDATE' THEN ancestors := ancestors || OLD.path; END IF;
    FOR ancestor IN SELECT DISTINCT a FROM unnest(ancestors) AS a WHERE a <> r.id ORDER BY 1 LOOP
        s := 't_' || ancestor;
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                  WHERE n.nspname = s AND c.relname = 'change_head');  -- a log to write
        PERFORM set_config('role', s, true);  -- each log written under its own tenant's role
        EXECUTE format('UPDATE %I.change_head SET last = last + 1 WHERE id = 1', s);
        EXECUTE format('INSERT INTO %I.changes (position, logged_at, kind, op, body) '
                       'SELECT last, clock_timestamp(), ''tenant'', $1, $2 FROM %I.change_head WHERE id = 1', s, s)
            USING TG_OP, jsonb_build_object('id', r.id);
        PERFORM pg_notify('tenantry_changes', ancestor);
    END LOOP;
    PERFORM set_config('role', was, true);
    RETURN NULL;
END $$
"""

COLUMNS = ("status, parent_id, path, domain, company, kind, parent_access, allow_create_tenants, contact_name, "
           "contact_email, custom_properties, deleted_at")


def upgrade() -> None:
    op.execute(FUNCTION)
    op.execute(f"CREATE CONSTRAINT TRIGGER tenants_logged AFTER INSERT OR UPDATE OF {COLUMNS} OR DELETE "
               "ON tenantry.tenants DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
               "EXECUTE FUNCTION tenantry.log_tenant_change()")
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid()),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenantry.tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("kinds", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("secret", sa.LargeBinary(), nullable=False),  # sealed (app.auth.secrets), as tenant credentials are
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("position", sa.BigInteger(), nullable=False),  # delivered up to here
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),  # of the next entry
        sa.Column("failing_since", sa.DateTime(timezone=True)),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="tenantry",
    )
    op.create_index("webhooks_tenant_idx", "webhooks", ["tenant_id"], schema="tenantry")
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column("webhook_id", sa.Uuid(), sa.ForeignKey("tenantry.webhooks.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),  # the webhook-id header: tenant:position
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),  # SUCCEEDED, FAILED
        sa.Column("http_status", sa.Integer()),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("error", sa.Text()),
        sa.Column("redelivery", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="tenantry",
    )
    op.create_index("webhook_deliveries_webhook_idx", "webhook_deliveries", ["webhook_id", "id"], schema="tenantry")
    op.create_table(
        "shares",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid()),
        sa.Column("source_tenant", sa.Text(), sa.ForeignKey("tenantry.tenants.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("target_tenant", sa.Text(), sa.ForeignKey("tenantry.tenants.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("proposed_in", sa.Text(), nullable=False),  # the tenant whose admin proposed it
        sa.Column("selection", postgresql.JSONB(), nullable=False),  # group or devices, and what data
        sa.Column("state", sa.Text(), nullable=False, server_default="PROPOSED"),
        sa.Column("source_accepted_by", sa.Text()),
        sa.Column("target_accepted_by", sa.Text()),
        sa.Column("position", sa.BigInteger()),  # the source's log, copied up to here (set when ACTIVE)
        sa.Column("copied", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("state IN ('PROPOSED', 'ACTIVE', 'PAUSED', 'REVOKED')", name="shares_state_check"),
        schema="tenantry",
    )
    op.create_index("shares_source_idx", "shares", ["source_tenant"], schema="tenantry")
    op.create_index("shares_target_idx", "shares", ["target_tenant"], schema="tenantry")
    op.add_column("usage_daily", sa.Column("change_count", sa.BigInteger(), nullable=False, server_default="0"),
                  schema="tenantry")
    op.add_column("usage_daily", sa.Column("webhook_delivery_count", sa.BigInteger(), nullable=False,
                                           server_default="0"), schema="tenantry")


def downgrade() -> None:
    op.drop_column("usage_daily", "webhook_delivery_count", schema="tenantry")
    op.drop_column("usage_daily", "change_count", schema="tenantry")
    op.drop_table("shares", schema="tenantry")
    op.drop_table("webhook_deliveries", schema="tenantry")
    op.drop_table("webhooks", schema="tenantry")
    op.execute("DROP TRIGGER tenants_logged ON tenantry.tenants")
    op.execute("DROP FUNCTION tenantry.log_tenant_change()")
