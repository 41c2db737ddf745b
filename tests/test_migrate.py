"""`migrate` brings every tenant schema to head, one transaction each; failures are per tenant."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, text

from app.db.engines import make_engine
from app.runtime.platform import Platform
from app.settings import Settings
from app.tenancy import alembic_chains
from app.tenancy.alembic_chains import alembic_config, head_revision
from app.tenancy.migrate import UpgradeScripts, migrate_one, migrate_tenants
from tests.conftest import World
from tests.test_stops import ROOT, TENANTRY


async def test_behind_tenants_migrate_and_one_failure_stops_no_other(world: World, platform: Platform) -> None:
    behind, broken = await world.tenant(), await world.tenant()
    async with platform.db.owner.connect() as conn:
        conn = await conn.execution_options(isolation_level="READ COMMITTED")

        def downgrade(sync_conn: Connection) -> None:
            # `behind` becomes a tenant created when t0001 was the head.
            command.downgrade(alembic_config("tenant", connection=sync_conn, schema=f"t_{behind.id}"), "t0001")

        await conn.run_sync(downgrade)
        await conn.exec_driver_sql(
            f"UPDATE tenantry.tenants SET schema_version = 't0001' WHERE id = '{behind.id}'; "
            # `broken` claims a revision no script knows.
            f"UPDATE t_{broken.id}.alembic_version SET version_num = 'bogus'; "
            f"UPDATE tenantry.tenants SET schema_version = 'bogus' WHERE id = '{broken.id}'")
        await conn.commit()

    report = await migrate_tenants(platform.db.owner, app_role=platform.settings.app_role, parallel=2)
    assert behind.id in report.migrated
    assert set(report.failed) == {broken.id}
    async with platform.db.owner.connect() as conn:
        rows: dict[str, str] = dict((await conn.execute(text(
            "SELECT id, coalesce(migration_error, schema_version) FROM tenantry.tenants WHERE id IN (:a, :b)"),
            {"a": behind.id, "b": broken.id})).all())
    assert rows[behind.id] == head_revision("tenant")
    assert "bogus" in rows[broken.id]

    # The migrated tenant works, through its role, with the table the migration added.
    created = await world.api.gql('mutation { createDevice(input: {name: "d", externalId: "e-1"}) { id } }',
                                  token=behind.token, tenant=behind.id)
    assert created.data["createDevice"]["id"]

    # Fixed, a re-run resumes with just that tenant.
    async with platform.db.owner.connect() as conn:
        head = head_revision("tenant")
        await conn.exec_driver_sql(f"UPDATE t_{broken.id}.alembic_version SET version_num = '{head}'")
    again = await migrate_tenants(platform.db.owner, app_role=platform.settings.app_role)
    assert again.failed == {}
    assert broken.id in again.migrated
    assert behind.id in again.current


EXPAND = '''"""Test only: an expand step.

Revision ID: expand_test
Revises: {down}
"""
from alembic import op
import sqlalchemy as sa

revision = "expand_test"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("expand_note", sa.Text()))
    op.create_index("devices_expand_note_idx", "devices", ["expand_note"])


def downgrade() -> None:
    op.drop_index("devices_expand_note_idx", "devices")
    op.drop_column("devices", "expand_note")
'''


async def test_the_server_keeps_answering_while_a_tenant_migrates(world: World, platform: Platform,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Expand/contract: a new migration (a column and an index) applied under a stream of writes and
    reads of the same tenant; every request is answered, before, during and after."""
    t = await world.tenant()
    head = head_revision("tenant")
    shutil.copytree(alembic_chains.MIGRATIONS_DIR, tmp_path / "migrations")
    (tmp_path / "migrations" / "tenant" / "versions" / "expand_test.py").write_text(EXPAND.format(down=head))
    monkeypatch.setattr(alembic_chains, "MIGRATIONS_DIR", tmp_path / "migrations")
    answered: list[float] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            made = await world.api.gql('mutation { createDevice(input: {name: "during"}) { id } }',
                                       token=t.token, tenant=t.id)
            listed = await world.api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)
            assert made.data["createDevice"]["id"]
            assert listed.data["devices"]["totalCount"] >= 1
            answered.append(time.perf_counter() - started)

    running = asyncio.create_task(traffic())
    try:
        await asyncio.sleep(0.2)
        for _ in range(3):  # up, down (by hand), up again: three rollouts under the same traffic
            report = await migrate_tenants(platform.db.owner, app_role=platform.settings.app_role, only=[t.id])
            assert report.migrated == [t.id], report
            async with platform.db.owner.begin() as conn:
                # One statement per call: Citus forwards DDL to the worker as one prepared statement.
                for statement in ("BEGIN", f"ALTER TABLE t_{t.id}.devices DROP COLUMN expand_note",
                                  f"UPDATE t_{t.id}.alembic_version SET version_num = '{head}'",
                                  f"UPDATE tenantry.tenants SET schema_version = '{head}' WHERE id = '{t.id}'",
                                  "COMMIT"):
                    await conn.exec_driver_sql(statement)
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await running
    assert len(answered) >= 3


async def test_a_database_that_is_gone_is_one_line_per_failure_never_a_traceback(settings: Settings) -> None:
    """`tenantry migrate` with no database answering: exit 2 and one line saying so; a tenant whose
    connection cannot be had is that tenant's one-line failure, and the run goes on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    env |= {"PYTHONPATH": str(ROOT), "TENANTRY_SECRET_KEY": str(settings.secret_key),
            "TENANTRY_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres"}
    done = await asyncio.create_subprocess_exec(*TENANTRY, "migrate", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, errors = await asyncio.wait_for(done.communicate(), timeout=120)
    lines = [line for line in errors.decode().splitlines() if line.strip()]
    assert done.returncode == 2, (out, errors)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: the database cannot be reached: ")
    gone = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/postgres", pool_size=1, max_overflow=0)
    try:
        failure = await migrate_one(gone, "t123456789", UpgradeScripts(head_revision("tenant")), "tenantry_app", 1000)
    finally:
        await gone.dispose()
    assert failure is not None
    assert failure.startswith("OperationalError: ")
    assert "\n" not in failure
