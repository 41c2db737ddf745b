"""Tenant limits: allocation from the parent's pool, race-free enforcement, request rate.

- A parent allocates maxDevices, maxUsers and storageBytes to its children out of its own:
  for each of these the parent has, the children's allocations add up to at most the
  parent's value (a child of a limited parent needs an allocation). maxSubtenants and
  requestsPerSecond are each tenant's own. Checked with the parent's row locked, so two
  concurrent allocations cannot both take the last of the pool.
- maxDevices is enforced under a per-tenant advisory lock held to the end of the creating
  transaction: with one slot left, concurrent creates yield exactly one device.
- requestsPerSecond is enforced by the access gate (`app.access.admission`).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import func, select, text

from app.db.transaction import Executor
from app.errors import LimitExceeded
from app.models.management import tenants, usage_daily
from app.models.tenant import devices
from app.tenancy.registry import TenantRecord

# Capacity a parent shares out among its children (devices, user licences, storage). The
# subtenant count and the request rate are the tenant's own and are not pooled.
POOLED = ("max_devices", "max_users", "storage_bytes")
NAMES = {"max_devices": "maxDevices", "max_users": "maxUsers", "max_subtenants": "maxSubtenants",
         "storage_bytes": "storageBytes", "requests_per_second": "requestsPerSecond", "request_burst": "requestBurst"}


async def check_allocation(db: Executor, *, parent_id: str, child_id: str | None,
                           wanted: Mapping[str, int | None]) -> None:
    """LIMIT_EXCEEDED unless the parent's pool covers the children's allocations with `wanted`
    for `child_id` (None: a child being created). Locks the parent row until the caller's
    transaction ends."""
    parent = (await db.execute(select(*(tenants.c[k] for k in POOLED)).where(tenants.c.id == parent_id)
                               .with_for_update())).one()
    for name in POOLED:
        pool = parent._mapping[name]
        if pool is None:
            continue  # an unlimited parent allocates freely
        value = wanted.get(name)
        if value is None:
            raise LimitExceeded(f"the parent's {NAMES[name]} is limited ({pool}): give this tenant an allocation",
                                limit=NAMES[name], available=pool)
        others = select(func.coalesce(func.sum(tenants.c[name]), 0)).where(
            tenants.c.parent_id == parent_id, tenants.c.status != "DELETED")
        if child_id is not None:
            others = others.where(tenants.c.id != child_id)
        allocated = int((await db.execute(others)).scalar_one())
        if allocated + value > pool:
            raise LimitExceeded(f"{NAMES[name]}: {value} asked, {max(pool - allocated, 0)} of {pool} left to allocate",
                                limit=NAMES[name], available=max(pool - allocated, 0))


async def check_own_allocations(db: Executor, *, tenant_id: str, new: Mapping[str, int | None]) -> None:
    """A tenant's new limits must still cover what it has allocated to its children."""
    for name, value in new.items():
        if name not in POOLED or value is None:
            continue
        allocated = int((await db.execute(select(func.coalesce(func.sum(tenants.c[name]), 0)).where(
            tenants.c.parent_id == tenant_id, tenants.c.status != "DELETED"))).scalar_one())
        if allocated > value:
            raise LimitExceeded(f"{NAMES[name]}: its subtenants already hold {allocated}", limit=NAMES[name],
                                available=allocated)


async def enforce_device_limit(db: Executor, tenant: TenantRecord) -> int | None:
    """Serialise device creation in this tenant (to the end of the transaction) and refuse
    the one that would exceed maxDevices. Returns the devices there were (None: unlimited)."""
    if tenant.max_devices is None:
        return None
    await db.execute(text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '/devices'))"))
    count = int((await db.execute(select(func.count()).select_from(devices))).scalar_one())
    if count >= tenant.max_devices:
        raise LimitExceeded(f"maxDevices reached ({tenant.max_devices})", limit="maxDevices",
                            available=0)
    return count


async def enforce_storage_limit(management: Executor, tenant: TenantRecord) -> None:
    """Refuse data writes once the last snapshot's size reached storageBytes."""
    if tenant.storage_bytes is None:
        return
    used = (await management.execute(select(usage_daily.c.storage_size).where(usage_daily.c.tenant_id == tenant.id)
                                     .order_by(usage_daily.c.day.desc()).limit(1))).scalar_one_or_none()
    if used is not None and used >= tenant.storage_bytes:
        raise LimitExceeded(f"storageBytes reached ({used} of {tenant.storage_bytes})", limit="storageBytes",
                            available=0)
