"""The cached provisioning DDL builds exactly what running every tenant migration builds,
and the SQLAlchemy models agree with the migrations of both chains."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from app.db.transaction import split_statements
from app.models import management, tenant
from app.runtime.platform import Platform
from app.tenancy.alembic_chains import alembic_config, head_revision
from app.tenancy.ddl import tenant_ddl

CATALOG = """
    SELECT 'column', c.relname || '.' || a.attname::text,
           format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
             || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') || ' identity=' || a.attidentity::text
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE n.nspname = :s AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind = 'r'
    UNION ALL
    SELECT 'constraint', c.relname || '.' || k.conname::text, replace(pg_get_constraintdef(k.oid), :s || '.', '')
      FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = :s
    UNION ALL
    SELECT 'index', i.indexname::text, replace(i.indexdef, :s || '.', '')
      FROM pg_indexes i WHERE i.schemaname = :s
    ORDER BY 1, 2
"""


async def _catalog(platform: Platform, schema: str) -> list[tuple[Any, ...]]:
    async with platform.db.owner.connect() as conn:
        rows = (await conn.execute(text(CATALOG), {"s": schema})).all()
        version = (await conn.execute(text(f"SELECT version_num FROM {schema}.alembic_version"))).scalar_one()
    return [tuple(r) for r in rows] + [("version", version, "")]


async def test_cached_ddl_equals_running_every_migration(platform: Platform) -> None:
    async with platform.db.owner.connect() as conn:
        for schema in ("ddl_check_cached", "ddl_check_chain"):
            await conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        await conn.exec_driver_sql(
            f"BEGIN; SELECT set_config('search_path', 'ddl_check_cached', true); {tenant_ddl().sql}; COMMIT")
        await conn.commit()  # end SQLAlchemy's autobegun (driver-autocommit) transaction
        conn = await conn.execution_options(isolation_level="READ COMMITTED")

        def run_chain(sync_conn: Connection) -> None:
            command.upgrade(alembic_config("tenant", connection=sync_conn, schema="ddl_check_chain"), "head")

        await conn.run_sync(run_chain)
        await conn.commit()
    try:
        cached = await _catalog(platform, "ddl_check_cached")
        chain = await _catalog(platform, "ddl_check_chain")
        assert len(cached) > 10
        assert cached == chain
        assert cached[-1] == ("version", head_revision("tenant"), "")
    finally:
        async with platform.db.owner.connect() as conn:
            await conn.exec_driver_sql("DROP SCHEMA ddl_check_cached CASCADE; DROP SCHEMA ddl_check_chain CASCADE")


async def test_models_match_the_migrations_of_both_chains(platform: Platform) -> None:
    async with platform.db.owner.connect() as conn:
        await conn.exec_driver_sql("DROP SCHEMA IF EXISTS ddl_models CASCADE; CREATE SCHEMA ddl_models")
        await conn.exec_driver_sql(f"BEGIN; SET LOCAL search_path = ddl_models; {tenant_ddl().sql}; COMMIT")

        def diffs(sync_conn: Connection) -> tuple[list[Any], list[Any]]:
            sync_conn.exec_driver_sql("SET search_path = ddl_models")
            tenant_ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
            tenant_diff = compare_metadata(tenant_ctx, tenant.metadata)
            sync_conn.exec_driver_sql("RESET search_path")
            mgmt_ctx = MigrationContext.configure(sync_conn, opts={
                "compare_type": True, "include_schemas": True,
                "include_name": lambda name, type_, parent: type_ != "schema" or name == "tenantry"})
            return tenant_diff, [d for d in compare_metadata(mgmt_ctx, management.metadata)
                                 if "alembic_version" not in str(d)]

        try:
            tenant_diff, management_diff = await conn.run_sync(diffs)
        finally:
            await conn.exec_driver_sql("RESET search_path; DROP SCHEMA ddl_models CASCADE")
    assert tenant_diff == []
    assert management_diff == []


async def test_the_ddl_run_one_statement_per_call_builds_the_same_schema(platform: Platform) -> None:
    """What Citus needs (it refuses several DDL statements in one call): the split DDL is the same DDL."""
    statements = split_statements(tenant_ddl().sql)
    assert len(statements) > 20
    assert not any(s.rstrip().endswith(";") for s in statements)
    async with platform.db.owner.connect() as conn:
        for schema in ("ddl_check_whole", "ddl_check_split"):
            await conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        await conn.exec_driver_sql(
            f"BEGIN; SELECT set_config('search_path', 'ddl_check_whole', true); {tenant_ddl().sql}; COMMIT")
        await conn.exec_driver_sql("BEGIN; SELECT set_config('search_path', 'ddl_check_split', true)")
        for statement in statements:
            await conn.exec_driver_sql(statement)
        await conn.exec_driver_sql("COMMIT")
        await conn.commit()
    try:
        assert await _catalog(platform, "ddl_check_split") == await _catalog(platform, "ddl_check_whole")
    finally:
        async with platform.db.owner.connect() as conn:
            await conn.exec_driver_sql("DROP SCHEMA ddl_check_whole CASCADE; DROP SCHEMA ddl_check_split CASCADE")
            await conn.commit()
