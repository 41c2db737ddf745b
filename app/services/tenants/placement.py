"""The operator's use cases of tenant placement: where each tenant lives (and how big it is),
moving one tenant to another Citus node, and rebalancing the nodes.

All of them are the management tenant's admins' alone (`Routed.require_operator`): placement is
a fact of the installation, not of any tenant. Every move is audited on the moved tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.db.naming import is_tenant_id, tenant_schema
from app.db.transaction import Executor, is_citus, transaction
from app.errors import NotFound
from app.runtime.platform import Platform
from app.services.audit import records as audit
from app.tenancy.placement import Moved, MoveProgress, Placement, move, placements, rebalance_plan, require_citus

__all__ = ["MoveProgress", "Moved", "Placement", "move_tenant", "rebalance", "tenant_placements"]


async def tenant_placements(platform: Platform, db: Executor, routed: Routed,
                            tenant_ids: Sequence[str]) -> dict[str, Placement]:
    routed.require_operator(TENANT_ADMIN)
    return await placements(db, [t for t in tenant_ids if is_tenant_id(t)], citus=await is_citus(platform.db.app))


async def move_tenant(platform: Platform, routed: Routed, tenant_id: str, node: str, *,
                      on_progress: Callable[[MoveProgress], None] | None = None) -> Moved:
    """Move a live tenant's schema to `node` (host:port) online."""
    routed.require_operator(TENANT_ADMIN)
    async with transaction(platform.db.app) as tx:
        record = await platform.registry.tenant(tx, tenant_id) if is_tenant_id(tenant_id) else None
    if record is None or record.status == "DELETED":
        raise NotFound(f"no tenant {tenant_id}")
    moved = await move(platform.db.owner, tenant_schema(record.id), node, on_progress=on_progress)
    await _audit(platform, routed, record.id, moved)
    return replace(moved, tenant_id=record.id)


async def rebalance(platform: Platform, routed: Routed, *, by: str, dry_run: bool = False,
                    on_plan: Callable[[list[tuple[str, str]]], None] | None = None,
                    on_moved: Callable[[Moved], None] | None = None,
                    on_progress: Callable[[MoveProgress], None] | None = None) -> list[Moved]:
    """Even the nodes out by size or by count with Citus's own plan, one schema at a time. An
    interrupted rebalance leaves every schema whole on one node; running it again plans anew."""
    routed.require_operator(TENANT_ADMIN)
    await require_citus(platform.db.owner)
    async with transaction(platform.db.owner) as tx:
        plan = await rebalance_plan(tx, by)
    if on_plan is not None:
        on_plan(plan)
    done: list[Moved] = []
    for schema, target in [] if dry_run else plan:
        moved = await move(platform.db.owner, schema, target, on_progress=on_progress)
        tenant_id = schema.removeprefix("t_")
        async with transaction(platform.db.app) as tx:
            record = await platform.registry.tenant(tx, tenant_id) if is_tenant_id(tenant_id) else None
        # A spare of the provisioning pool has its future tenant's id but no tenant (nor audit log) yet.
        moved = replace(moved, tenant_id=tenant_id if record is not None else f"{tenant_id} (spare)")
        if record is not None:
            await _audit(platform, routed, tenant_id, moved)
        done.append(moved)
        if on_moved is not None:
            on_moved(moved)
    return done


async def _audit(platform: Platform, routed: Routed, tenant_id: str, moved: Moved) -> None:
    async with transaction(platform.db.app) as tx:
        await audit.record(tx, tenant_id=tenant_id, actor=routed.actor, action="tenant.moved", target=tenant_id,
                           changes=audit.diff({"node": moved.source}, {"node": moved.target}))
