"""`tenantry migrate`: the management chain, the application role, then every tenant schema.

Tenants migrate one transaction each, K at a time, with a lock_timeout so one busy tenant
cannot stall the rollout; each tenant's version and last error are written to the registry,
so a second run resumes where the first stopped and one tenant's failure stops no other.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache

from alembic import command
from sqlalchemy import Connection, Engine, NullPool, create_engine, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import AppError
from app.models.management import tenants
from app.settings import Settings
from app.tenancy.alembic_chains import alembic_config, head_revision
from app.tenancy.naming import MANAGEMENT_SCHEMA, checked_identifier, tenant_role, tenant_schema


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
) -> MigrationReport:
    """Bring every live tenant schema to head, `parallel` at a time, in worker processes.

    Processes, not tasks: Alembic keeps its migration context and `op` proxy in module
    globals, so two migrations in one process would trample each other.
    """
    head = head_revision("tenant")
    report = MigrationReport(head=head)
    async with owner.connect() as conn:
        rows = (await conn.execute(
            select(tenants.c.id, tenants.c.schema_version).where(tenants.c.status != "DELETED")
            .order_by(tenants.c.depth, tenants.c.id)
        )).all()
    pending = []
    for row in rows:
        if row.schema_version == head:
            report.current.append(row.id)
            progress(row.id, None)
        else:
            pending.append(row.id)
    if not pending:
        return report

    url = owner.url.render_as_string(hide_password=False)
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with a running event loop
    with ProcessPoolExecutor(max_workers=max(1, min(parallel, len(pending))), mp_context=spawn,
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:

        async def one(tenant_id: str) -> None:
            error = await loop.run_in_executor(pool, migrate_one, url, tenant_id, app_role, lock_timeout_ms)
            if error is None:
                report.migrated.append(tenant_id)
            else:
                report.failed[tenant_id] = error
            progress(tenant_id, error)

        await asyncio.gather(*(one(tenant_id) for tenant_id in pending))
    return report


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end when the `tenantry migrate` process that started us ends, even by
    SIGKILL (a spawned worker holds both ends of the pool's queue, so it never sees EOF). Linux
    delivers SIGTERM at the parent's death; a watcher thread covers other systems and the race
    in which the parent died before that was set."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


@cache
def _sync_engine(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool)


def migrate_one(url: str, tenant_id: str, app_role: str, lock_timeout_ms: int) -> str | None:
    """Migrate one tenant schema in one transaction (runs in a worker process)."""
    schema, role = tenant_schema(tenant_id), tenant_role(tenant_id)
    head = head_revision("tenant")
    engine = _sync_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{lock_timeout_ms}ms"})
            command.upgrade(alembic_config("tenant", connection=conn, schema=schema), "head")
            # Default privileges cover new tables; re-granting also covers tables created
            # before a default-privilege change (idempotent).
            conn.exec_driver_sql(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}; "
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}; "
                f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {schema}.alembic_version FROM {role}; "
                f"REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.audit_log FROM {role}; "
                f"GRANT {role} TO {checked_identifier(app_role)}"
            )
            conn.execute(update(tenants).where(tenants.c.id == tenant_id)
                         .values(schema_version=head, migration_error=None))
    except Exception as exc:  # recorded per tenant; the others go on
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        with engine.begin() as conn:
            conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(migration_error=message))
        return message
    return None
