"""`tenantry migrate`: the management chain, the application role, then every tenant schema.

Tenants migrate one transaction each, K at a time, with a lock_timeout so one busy tenant
cannot stall the rollout; each tenant's version and last error are written to the registry,
so a second run resumes where the first stopped and one tenant's failure stops no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from alembic import command
from sqlalchemy import Connection, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.engines import make_engine
from app.db.naming import MANAGEMENT_SCHEMA, checked_identifier, tenant_role, tenant_schema
from app.db.transaction import is_citus, split_statements
from app.errors import AppError
from app.models.management import tenants
from app.settings import Settings
from app.tenancy.alembic_chains import alembic_config, head_revision
from app.tenancy.grants import default_privileges_sql, existing_objects_sql, grants_sql


@dataclass
class MigrationReport:
    head: str
    migrated: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


async def migrate_management(owner: AsyncEngine, settings: Settings, app_password: str) -> None:
    async with owner.connect() as conn:
        conn = await conn.execution_options(isolation_level="READ COMMITTED")

        def upgrade(sync_conn: Connection) -> None:
            command.upgrade(alembic_config("management", connection=sync_conn), "head")

        await conn.run_sync(upgrade)
        await conn.commit()
        await _claim_role(conn, checked_identifier(settings.app_role), "TENANTRY_APP_ROLE")
        for statement in app_role_sql(settings.app_role, app_password):
            try:
                await conn.exec_driver_sql(statement)
            except DBAPIError as exc:
                # Never the statement itself: one of them carries the app role's password.
                raise AppError(f"could not set up the application role {settings.app_role}: "
                               f"{str(exc.orig).strip().splitlines()[0]}") from None
        await conn.commit()


async def _claim_role(conn: AsyncConnection, role: str, setting: str) -> None:
    """Roles are cluster-wide, databases are not: a role marks which database's Tenantry owns it
    (a role comment), and a second installation on the same cluster stops with one clear line
    instead of taking the first one's role over."""
    database = (await conn.execute(text("SELECT current_database()"))).scalar_one()
    owner = (await conn.execute(text("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = :r"),
                                {"r": role})).scalar_one_or_none()
    mark = f"tenantry:{database}"
    if owner is not None and owner.startswith("tenantry:") and owner != mark:
        raise AppError(f"role {role} belongs to the Tenantry installation in database {owner.split(':', 1)[1]!r} of "
                       f"this PostgreSQL cluster (roles are cluster-wide): set {setting} to another name, or use "
                       "another cluster")
    exists = owner is not None or (await conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"),
                                                      {"r": role})).first() is not None
    if not exists:
        await conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN NOINHERIT")
    await conn.exec_driver_sql(f"COMMENT ON ROLE {role} IS '{mark}'")


def app_role_sql(app_role: str, password: str) -> list[str]:
    """The NOINHERIT login role requests run as: management DML, no tenant data of its own."""
    role = checked_identifier(app_role)
    s = MANAGEMENT_SCHEMA
    quoted_password = password.replace("'", "''")
    return [
        f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {role} LOGIN NOINHERIT;
              END IF;
            END $$""",
        # (A new role has neither CREATEROLE nor CREATEDB; naming them here would need the owner to
        # hold CREATEDB itself on PostgreSQL 16.)
        f"ALTER ROLE {role} LOGIN NOINHERIT PASSWORD '{quoted_password}'",
        "REVOKE ALL ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {s} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {role}",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {s}.alembic_version FROM {role}",
        # The audit log is append-only for the application.
        f"REVOKE UPDATE, DELETE, TRUNCATE ON {s}.audit_log FROM {role}",
    ]


async def migrate_tenants(
    owner: AsyncEngine,
    *,
    app_role: str,
    parallel: int = 4,
    lock_timeout_ms: int = 5000,
    progress: Callable[[str, str | None], None] = lambda tenant_id, error: None,
    total: Callable[[int], None] = lambda n: None,
    only: Sequence[str] | None = None,
) -> MigrationReport:
    """Bring every live tenant schema to head, `parallel` at a time; `total` hears how many
    tenants there are, `progress` each one as it is done (or found current).

    The upgrade from each revision to head is rendered once, offline, by the tenant chain's own
    scripts (as provisioning renders the DDL at head: tests/test_tenant_ddl.py proves the two
    agree), and each tenant runs that text in one transaction: no Alembic per tenant, and no
    `GRANT … ON ALL TABLES IN SCHEMA`, which scans all of pg_class (97 % of the time at 10,000
    tenants, issue 14): the schema's default privileges grant what the upgrade creates.
    """
    head = head_revision("tenant")
    report = MigrationReport(head=head)
    async with owner.connect() as conn:
        stmt = select(tenants.c.id, tenants.c.schema_version).where(tenants.c.status != "DELETED")
        if only is not None:
            stmt = stmt.where(tenants.c.id.in_(list(only)))
        rows = (await conn.execute(stmt.order_by(tenants.c.depth, tenants.c.id))).all()
    total(len(rows))
    pending = []
    for row in rows:
        if row.schema_version == head:
            report.current.append(row.id)
            progress(row.id, None)
        else:
            pending.append(row.id)
    if not pending:
        return report
    queue: asyncio.Queue[str] = asyncio.Queue()
    for tenant_id in pending:
        queue.put_nowait(tenant_id)
    scripts = UpgradeScripts(head)
    role_of_app = checked_identifier(app_role)
    workers = max(1, min(parallel, len(pending)))
    # Its own pool, one connection a worker: the owner pool is sized for the server's few needs.
    engine = make_engine(owner.url.render_as_string(hide_password=False), pool_size=workers, max_overflow=0)

    async def worker() -> None:
        while not queue.empty():
            tenant_id = queue.get_nowait()
            error = await migrate_one(engine, tenant_id, scripts, role_of_app, lock_timeout_ms)
            if error is None:
                report.migrated.append(tenant_id)
            else:
                report.failed[tenant_id] = error
            progress(tenant_id, error)

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        await engine.dispose()
    return report


class UpgradeScripts:
    """The offline upgrade text from each revision to head, rendered once per revision."""

    def __init__(self, head: str) -> None:
        self.head = head
        self._known: dict[str, str] = {}

    def from_revision(self, revision: str) -> str:
        if revision == self.head:
            return ""
        if revision not in self._known:
            buffer = io.StringIO()
            command.upgrade(alembic_config("tenant", output=buffer), f"{revision}:head", sql=True)
            self._known[revision] = buffer.getvalue()
        return self._known[revision]


async def migrate_one(owner: AsyncEngine, tenant_id: str, scripts: UpgradeScripts, app_role: str,
                      lock_timeout_ms: int) -> str | None:
    """One tenant to head in one transaction; its error (also kept in the registry), or None."""
    schema, role = tenant_schema(tenant_id), tenant_role(tenant_id)
    # The engines run in autocommit: the transaction is this one's own BEGIN … COMMIT.
    try:
        citus = await is_citus(owner)  # there, DDL goes one statement per call
        async with owner.connect() as conn:
            try:
                await _upgrade_one(conn, tenant_id, schema, role, scripts, app_role, lock_timeout_ms, citus)
            except Exception as exc:  # recorded per tenant; the others go on
                message = _one_line(exc)
                with contextlib.suppress(Exception):  # a lost connection takes the record with it
                    await conn.exec_driver_sql("ROLLBACK")
                    await conn.execute(update(tenants).where(tenants.c.id == tenant_id)
                                       .values(migration_error=message))
                return message
    except Exception as exc:  # no connection at all (the database went away): one line, not a traceback
        return _one_line(exc)
    return None


async def _upgrade_one(conn: AsyncConnection, tenant_id: str, schema: str, role: str, scripts: UpgradeScripts,
                       app_role: str, lock_timeout_ms: int, citus: bool) -> None:
    await conn.exec_driver_sql(f"BEGIN; SELECT set_config('lock_timeout', '{int(lock_timeout_ms)}ms', true), "
                               f"set_config('search_path', '{schema}', true)")
    # The schema's own record of its revision is the truth (the registry only mirrors it).
    version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version FOR UPDATE")).scalar()
    if not isinstance(version, str):
        raise RuntimeError(f"{schema} records no revision")
    try:
        upgrade = scripts.from_revision(version)
    except Exception as exc:  # an unknown revision: Alembic says which
        raise RuntimeError(f"cannot upgrade from revision {version!r}: {exc}") from None
    grants = await _grants(conn, schema, role, app_role)
    for sql in (split_statements(upgrade) + split_statements(grants) if citus else [upgrade, grants]):
        if sql:
            await conn.exec_driver_sql(sql)
    await conn.execute(update(tenants).where(tenants.c.id == tenant_id)
                       .values(schema_version=scripts.head, migration_error=None))
    await conn.exec_driver_sql("COMMIT")


def _one_line(exc: BaseException) -> str:
    """An error as one line: the driver's own message (not SQLAlchemy's wrapping with the SQL)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}"[:500]


async def _grants(conn: AsyncConnection, schema: str, role: str, app_role: str) -> str:
    """What keeps the tenant role's rights as provisioning sets them. A schema made before default
    privileges were set at provisioning gets them, and its existing tables granted, once."""
    has_defaults = (await conn.exec_driver_sql(
        f"SELECT EXISTS (SELECT FROM pg_default_acl WHERE defaclnamespace = '{schema}'::regnamespace)")).scalar()
    once = "" if has_defaults else default_privileges_sql(schema, role) + existing_objects_sql(schema, role)
    return once + grants_sql(schema, role, app_role)
