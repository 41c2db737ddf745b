"""Provisioning is one transaction: a failure after any step leaves nothing behind."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from app.db.naming import spare_schema
from app.errors import Conflict
from app.runtime.platform import Platform
from app.services.audit.records import SYSTEM
from app.services.tenants import provisioning
from app.services.tenants.provisioning import STEPS, TenantSpec, fill_spares, provision_tenant
from app.tenancy.ddl import tenant_ddl
from app.tenancy.registry import TenantRecord
from tests.conftest import Api, World, assert_denied, unique


class Injected(RuntimeError):
    pass


async def _management(platform: Platform) -> TenantRecord:
    async with platform.db.app.connect() as conn:
        record = await platform.registry.tenant(conn, "management")
    assert record is not None
    return record


async def _traces(platform: Platform, domain: str, email: str) -> dict[str, int]:
    async with platform.db.owner.connect() as conn:
        async def count(sql: str, **params: str) -> int:
            return int((await conn.execute(text(sql), params)).scalar_one())

        return {
            "registry": await count("SELECT count(*) FROM tenantry.tenants WHERE domain = :d", d=domain),
            "schemas": await count("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't_t%' AND nspname NOT IN "
                                   "(SELECT 't_' || id FROM tenantry.tenants WHERE status <> 'DELETED')"),
            "roles": await count("SELECT count(*) FROM pg_roles WHERE rolname LIKE 't_t%' AND rolname NOT IN "
                                 "(SELECT 't_' || id FROM tenantry.tenants WHERE status <> 'DELETED')"),
            "users": await count("SELECT count(*) FROM tenantry.users WHERE email = :e", e=email),
            "invitations": await count("SELECT count(*) FROM tenantry.invitations WHERE email = :e", e=email),
            "audit": await count("SELECT count(*) FROM tenantry.audit_log a WHERE NOT EXISTS "
                                 "(SELECT 1 FROM tenantry.tenants t WHERE t.id = a.tenant_id)"),
        }


def _spec(parent: TenantRecord, domain: str, email: str, password_hash: str | None) -> TenantSpec:
    return TenantSpec(domain=domain, company="Rollback Co", kind="STANDARD", parent=parent, template="standard",
                      admin_email=email, admin_password_hash=password_hash)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("with_password", [True, False], ids=["new-user", "invitation"])
async def test_a_failure_after_any_step_leaves_nothing(platform: Platform, step: str, with_password: bool) -> None:
    parent = await _management(platform)
    domain, email = unique("rb"), f"{unique('rb')}@x.test"

    def fail_at(reached: str) -> None:
        if reached == step:
            raise Injected(step)

    with pytest.raises(Injected):
        await provision_tenant(
            platform.db.owner, _spec(parent, domain, email, "argon2-hash" if with_password else None),
            app_role=platform.settings.app_role,
            tenant_roles_login=platform.settings.tenant_roles_login, invitation_ttl=timedelta(hours=48),
            actor=SYSTEM, on_step=fail_at,
        )
    assert await _traces(platform, domain, email) == {
        "registry": 0, "schemas": 0, "roles": 0, "users": 0, "invitations": 0, "audit": 0}


async def test_concurrent_creates_of_one_domain_yield_one_tenant(platform: Platform) -> None:
    parent = await _management(platform)
    domain = unique("race")

    async def attempt(i: int) -> str:
        result = await provision_tenant(
            platform.db.owner, _spec(parent, domain, f"race{i}-{domain}@x.test", None),
            app_role=platform.settings.app_role,
            tenant_roles_login=platform.settings.tenant_roles_login, invitation_ttl=timedelta(hours=1),
            actor=SYSTEM)
        return result.tenant.id

    outcomes = await asyncio.gather(*(attempt(i) for i in range(4)), return_exceptions=True)
    created = [o for o in outcomes if isinstance(o, str)]
    assert len(created) == 1
    assert all(isinstance(o, Conflict) for o in outcomes if not isinstance(o, str))
    traces = await _traces(platform, domain, "-")
    assert traces["registry"] == 1
    assert traces["schemas"] == 0
    assert traces["roles"] == 0


async def _spares(platform: Platform) -> list[str]:
    async with platform.db.owner.connect() as conn:
        return list((await conn.execute(text("SELECT id FROM tenantry.spare_schemas ORDER BY id"))).scalars())


async def test_a_spare_schema_becomes_the_tenant_and_comes_back_on_failure(api: Api, world: World,
                                                                        platform: Platform) -> None:
    settings = platform.settings
    await fill_spares(platform.db.owner, count=2, app_role=settings.app_role,
                      tenant_roles_login=settings.tenant_roles_login)
    spares = await _spares(platform)
    assert len(spares) == 2
    parent = await _management(platform)

    def fail(step: str) -> None:
        if step == "seed":
            raise Injected(step)

    with pytest.raises(Injected):
        await provision_tenant(platform.db.owner, _spec(parent, unique("sp"), f"{unique('sp')}@x.test", "h"),
                               app_role=settings.app_role, tenant_roles_login=settings.tenant_roles_login,
                               invitation_ttl=timedelta(hours=1), actor=SYSTEM, on_step=fail)
    assert await _spares(platform) == spares  # given back with the rest

    async def roles() -> set[tuple[str, str]]:
        """The spares' roles with the row version of each (xmin): any ALTER or rename shows."""
        async with platform.db.owner.connect() as conn:
            return {(r[0], r[1]) for r in await conn.execute(text(
                "SELECT rolname, xmin::text FROM pg_authid WHERE rolname = ANY(:n)"),
                {"n": [spare_schema(s) for s in spares]})}

    before = await roles()
    t = await world.tenant()  # takes a spare: the tenant gets the spare's id, its schema and role as they are
    assert t.id in spares
    assert await _spares(platform) == [s for s in spares if s != t.id]
    # No role was created, renamed or altered (every role change costs each backend a rebuild of
    # the application role's membership list at its next SET ROLE: see fill_spares).
    assert await roles() == before
    async with platform.db.owner.connect() as conn:
        names = set((await conn.execute(text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:n)"),
                                        {"n": [spare_schema(s) for s in spares]})).scalars())
    assert names == {spare_schema(s) for s in spares}  # the tenant's schema, and the spare still waiting
    made = await api.gql('mutation { createDevice(input: {name: "on a spare"}) { id } }', token=t.token, tenant=t.id)
    assert made.data["createDevice"]["id"]
    other = await world.tenant()
    await assert_denied(platform, other.id, f"SELECT * FROM t_{t.id}.devices")
    await fill_spares(platform.db.owner, count=0, app_role=settings.app_role,
                      tenant_roles_login=settings.tenant_roles_login)


async def test_keepers_in_several_workers_never_overshoot_the_spare_pool(platform: Platform) -> None:
    # Each worker process runs its own keeper; three racing on separate connections must still
    # leave exactly `count` spares, not three times as many.
    settings = platform.settings
    await fill_spares(platform.db.owner, count=0, app_role=settings.app_role,
                      tenant_roles_login=settings.tenant_roles_login)
    before = len(await _spares(platform))
    made = await asyncio.gather(*(fill_spares(platform.db.owner, count=before + 2, app_role=settings.app_role,
                                              tenant_roles_login=settings.tenant_roles_login) for _ in range(3)))
    assert sum(made) == 2
    spares = await _spares(platform)
    assert len(spares) == before + 2
    async with platform.db.owner.begin() as conn:  # leave the pool as other tests expect it
        for name in map(spare_schema, spares):
            await conn.exec_driver_sql(f"DROP SCHEMA {name} CASCADE; DROP OWNED BY {name}; DROP ROLE {name}")
        await conn.execute(text("DELETE FROM tenantry.spare_schemas"))


async def test_stale_spares_are_dropped_a_few_per_transaction(platform: Platform) -> None:
    """After a migration every spare is stale: they go `batch` per transaction (all in one exhausted
    the lock table), and the pool is made again at the new revision."""
    settings = platform.settings
    await fill_spares(platform.db.owner, count=0, app_role=settings.app_role,
                      tenant_roles_login=settings.tenant_roles_login)
    before = await _spares(platform)
    await fill_spares(platform.db.owner, count=len(before) + 7, app_role=settings.app_role,
                      tenant_roles_login=settings.tenant_roles_login)
    async with platform.db.owner.begin() as conn:
        await conn.execute(text("UPDATE tenantry.spare_schemas SET revision = 'older'"))
    stale = await _spares(platform)
    assert await provisioning.drop_stale_spares(platform.db.owner, tenant_ddl().revision, batch=3) == \
        -(-len(stale) // 3)
    assert await _spares(platform) == []
    async with platform.db.owner.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM pg_namespace WHERE nspname = ANY(:n)"),
                                   {"n": [spare_schema(s) for s in stale]})).scalar_one()
    assert left == 0
    assert await fill_spares(platform.db.owner, count=2, app_role=settings.app_role,
                             tenant_roles_login=settings.tenant_roles_login) == 2
    async with platform.db.owner.begin() as conn:  # leave the pool empty, as other tests expect it
        await conn.execute(text("UPDATE tenantry.spare_schemas SET revision = 'older'"))
    await provisioning.drop_stale_spares(platform.db.owner, tenant_ddl().revision)


def test_the_spare_pool_is_sized_by_recent_demand() -> None:
    """A burst of creates grows the keeper's target (twice what was taken in the last minute, within
    [base, MAX_SPARES]); a quiet minute brings it back to the base size, and a take wakes the keeper."""
    now = [1000.0]
    demand = provisioning.SpareDemand(clock=lambda: now[0])
    assert demand.target(5) == 5
    for _ in range(10):
        demand.took()
    assert demand.wake.is_set()
    assert demand.target(5) == 20
    for _ in range(100):
        demand.took()
    assert demand.target(5) == provisioning.MAX_SPARES
    now[0] += provisioning.SpareDemand.WINDOW + 1
    assert demand.target(5) == 5
