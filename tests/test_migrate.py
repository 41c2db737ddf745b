"""`migrate` brings every tenant schema to head, one transaction each; failures are per tenant."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Connection, text

from app.platform import Platform
from app.tenancy.alembic_chains import alembic_config, head_revision
from app.tenancy.migrate import migrate_tenants
from tests.conftest import World


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
