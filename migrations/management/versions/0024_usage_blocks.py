"""Closed days summed once: `usage_blocks` holds each tenant's usage over aligned blocks of 2, 4,
... 256 days, so a summary over a range reads a handful of rows per tenant instead of one per day
(subtenantUsage over 10,000 tenants x 30 days aggregated 300,000 rows a request).

A block of 2**k days starts on a day whose number since 1970-01-01 is a multiple of 2**k. Any
range splits into at most two blocks per level plus single days (`usage_pieces`, the same split for
every tenant), each summed and maximised like a day. Blocks exist only for closed days:
`usage_closed.through` is the last day they cover, advanced by `close_usage_days` (the snapshot
loop, after midnight UTC). A later write to a closed day (a correction, a seed, a late flush)
rebuilds the blocks holding it in the same transaction (statement triggers below), so a block
always equals the days it holds: the summary never depends on when the days were closed.

Revision ID: m0024
Revises: m0023
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0024"
down_revision: str | None = "m0023"
branch_labels: str | None = None
depends_on: str | None = None

COUNTERS = ("request_count", "device_request_count", "measurements_created_count", "events_created_count",
            "events_updated_count", "alarms_created_count", "alarms_updated_count", "inventories_created_count",
            "inventories_updated_count", "operations_created_count", "operations_updated_count",
            "subscription_event_count", "change_count", "webhook_delivery_count", "query_cost")
LEVELS = 8  # blocks up to 256 days: a range of at most 400 days holds no aligned block of 512

# What both the close and a rebuild write: a block's columns, and its values from its days `d`.
_INTO = f"INTO tenantry.usage_blocks (level, start, tenant_id, {', '.join(COUNTERS)}, peak_device_count, " \
        "peak_storage_size, last_day)"
_TOTALS = ", ".join(f"sum(d.{c})" for c in COUNTERS) + ", max(d.device_count), max(d.storage_size), max(d.day)"
_UPDATED = ", ".join(f"{c} = EXCLUDED.{c}" for c in (*COUNTERS, "peak_device_count", "peak_storage_size", "last_day"))

FUNCTIONS = f"""
CREATE FUNCTION tenantry.usage_block_start(day date, level int) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT day - (((day - DATE '1970-01-01') % (1 << level)) + (1 << level)) % (1 << level)
$$;

-- The split of [first, last] into blocks (level > 0) and single days (level 0): the largest
-- aligned block that fits and is closed, else one day.
CREATE FUNCTION tenantry.usage_pieces(first date, last date) RETURNS TABLE (level int, start date)
LANGUAGE plpgsql STABLE PARALLEL SAFE ROWS 12 SET search_path = pg_catalog AS $$
DECLARE
    closed date := (SELECT through FROM tenantry.usage_closed);
    p date := first;
    k int;
BEGIN
    WHILE p <= last LOOP
        k := {LEVELS};
        WHILE k > 0 AND (closed IS NULL OR tenantry.usage_block_start(p, k) <> p
                         OR p + ((1 << k) - 1) > least(last, closed)) LOOP
            k := k - 1;
        END LOOP;
        level := k; start := p;
        RETURN NEXT;
        p := p + (1 << k);
    END LOOP;
END $$;

-- The closed blocks that hold any of these (tenant, day) pairs.
CREATE FUNCTION tenantry.usage_touched(tenant_ids text[], days date[], closed date)
RETURNS TABLE (level int, start date, tenant_id text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT DISTINCT k, tenantry.usage_block_start(t.day, k), t.tenant_id
      FROM unnest(tenant_ids, days) AS t (tenant_id, day), generate_series(1, {LEVELS}) AS k
     WHERE tenantry.usage_block_start(t.day, k) + ((1 << k) - 1) <= closed
$$;

-- The blocks holding these (tenant, day) pairs, computed again from their days (closed blocks only).
CREATE FUNCTION tenantry.usage_rebuild(tenant_ids text[], days date[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    closed date := (SELECT through FROM tenantry.usage_closed);
BEGIN
    IF closed IS NULL THEN RETURN; END IF;
    INSERT {_INTO}
        SELECT r.level, r.start, r.tenant_id, {_TOTALS}
          FROM tenantry.usage_touched(tenant_ids, days, closed) AS r
          JOIN tenantry.usage_daily d ON d.tenant_id = r.tenant_id
                                     AND d.day BETWEEN r.start AND r.start + ((1 << r.level) - 1)
         GROUP BY r.level, r.start, r.tenant_id
    ON CONFLICT (level, start, tenant_id) DO UPDATE SET {_UPDATED};
    DELETE FROM tenantry.usage_blocks b USING tenantry.usage_touched(tenant_ids, days, closed) AS r
     WHERE b.level = r.level AND b.start = r.start AND b.tenant_id = r.tenant_id
       AND NOT EXISTS (SELECT FROM tenantry.usage_daily d WHERE d.tenant_id = r.tenant_id
                          AND d.day BETWEEN r.start AND r.start + ((1 << r.level) - 1));
END $$;

-- Writers of closed days queue behind one lock (and behind close_usage_days), so two of them
-- rebuilding one block each see the other's committed days.
CREATE FUNCTION tenantry.usage_days_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    tenant_ids text[];
    days date[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(tenant_id), array_agg(day) INTO tenant_ids, days FROM new_days WHERE day < today;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(tenant_id), array_agg(day) INTO tenant_ids, days
          FROM (SELECT tenant_id, day FROM new_days WHERE day < today
                UNION SELECT tenant_id, day FROM old_days WHERE day < today) AS changed;
    ELSE
        SELECT array_agg(tenant_id), array_agg(day) INTO tenant_ids, days FROM old_days WHERE day < today;
    END IF;
    IF tenant_ids IS NULL THEN  -- today's counters and snapshots: no closed day touched
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('tenantry.usage_blocks'));
    PERFORM tenantry.usage_rebuild(tenant_ids, days);
    RETURN NULL;
END $$;

CREATE FUNCTION tenantry.usage_days_truncated() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    DELETE FROM tenantry.usage_blocks;
    RETURN NULL;
END $$;

-- Blocks for every day up to `through` (never today's or later: those still change).
CREATE FUNCTION tenantry.close_usage_days(through date) RETURNS date
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    upto date := least(through, (now() AT TIME ZONE 'UTC')::date - 1);
    closed date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenantry.usage_blocks'));
    closed := (SELECT c.through FROM tenantry.usage_closed c);
    IF closed IS NOT NULL AND closed >= upto THEN
        RETURN closed;
    END IF;
    FOR k IN 1..{LEVELS} LOOP  -- the blocks that end after the old horizon and by the new one
        INSERT {_INTO}
            SELECT k, tenantry.usage_block_start(d.day, k), d.tenant_id, {_TOTALS}
              FROM tenantry.usage_daily d
             WHERE d.day <= upto
               AND (closed IS NULL OR d.day >= tenantry.usage_block_start(closed + 1, k))
             GROUP BY 2, 3
            HAVING tenantry.usage_block_start(max(d.day), k) + ((1 << k) - 1) <= upto
               AND (closed IS NULL OR tenantry.usage_block_start(max(d.day), k) + ((1 << k) - 1) > closed)
        ON CONFLICT (level, start, tenant_id) DO UPDATE SET {_UPDATED};  -- none unless `through` went back
    END LOOP;
    UPDATE tenantry.usage_closed SET through = upto;
    RETURN upto;
END $$;
"""


def upgrade() -> None:
    op.create_table(
        "usage_blocks",
        sa.Column("level", sa.SmallInteger(), primary_key=True),
        sa.Column("start", sa.Date(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in COUNTERS),
        sa.Column("peak_device_count", sa.BigInteger(), nullable=False),
        sa.Column("peak_storage_size", sa.BigInteger(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        schema="tenantry",
    )
    op.create_table(
        "usage_closed",
        sa.Column("id", sa.SmallInteger(), primary_key=True),
        sa.Column("through", sa.Date()),
        sa.CheckConstraint("id = 1", name="usage_closed_one_row"),
        schema="tenantry",
    )
    op.execute("INSERT INTO tenantry.usage_closed (id, through) VALUES (1, NULL)")
    op.execute(FUNCTIONS)
    for event, tables in (("INSERT", "NEW TABLE AS new_days"), ("UPDATE", "OLD TABLE AS old_days NEW TABLE AS "
                                                                          "new_days"),
                          ("DELETE", "OLD TABLE AS old_days")):
        op.execute(f"CREATE TRIGGER usage_days_{event.lower()} AFTER {event} ON tenantry.usage_daily "
                   f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION tenantry.usage_days_changed()")
    op.execute("CREATE TRIGGER usage_days_truncate AFTER TRUNCATE ON tenantry.usage_daily "
               "FOR EACH STATEMENT EXECUTE FUNCTION tenantry.usage_days_truncated()")
    # The days already recorded are closed now, up to yesterday.
    op.execute("SELECT tenantry.close_usage_days((now() AT TIME ZONE 'UTC')::date - 1)")


def downgrade() -> None:
    for event in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER usage_days_{event} ON tenantry.usage_daily")
    for function in ("close_usage_days(date)", "usage_days_truncated()", "usage_days_changed()",
                     "usage_rebuild(text[], date[])",
                     "usage_touched(text[], date[], date)", "usage_pieces(date, date)", "usage_block_start(date, int)"):
        op.execute(f"DROP FUNCTION tenantry.{function}")
    op.drop_table("usage_closed", schema="tenantry")
    op.drop_table("usage_blocks", schema="tenantry")
