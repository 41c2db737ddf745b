"""`tenantry tenants …`: list, create, suspend, activate, delete, and placement on Citus (placement, move,
rebalance)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from app.access.principal import Routed
from app.commands.common import console, err, operator, run
from app.db.naming import MANAGEMENT_TENANT_ID
from app.db.transaction import transaction
from app.runtime.platform import Platform
from app.settings import Settings
from app.tenancy.registry import TenantRecord


def _tenant_table(records: list[TenantRecord]) -> Table:
    table = Table("id", "domain", "company", "kind", "status", "parent", "depth", "schema", "created")
    for r in records:
        status = {"ACTIVE": "[green]ACTIVE[/green]", "SUSPENDED": "[yellow]SUSPENDED[/yellow]"}.get(
            r.status, f"[dim]{r.status}[/dim]")
        table.add_row(r.id, r.domain, r.company, r.kind, status, r.parent_id or "", str(r.depth),
                      r.schema_version or "", r.created_at.strftime("%Y-%m-%d %H:%M"))
    return table


async def _all_tenants(platform: Platform, routed: Routed, status: str | None = None) -> list[TenantRecord]:
    """The management tenant and every tenant below it, in pages of 500."""
    from app.services.tenants.queries import TenantFilter, list_subtree

    records: list[TenantRecord] = [routed.tenant] if status in (None, routed.tenant.status) else []
    after = None
    async with transaction(platform.db.app) as tx:
        while True:
            page = await list_subtree(tx, routed, first=500, after=after, cap=500, filter=TenantFilter(status=status))
            records.extend(page.items)
            if not page.has_next_page:
                return records
            after = page.cursors[-1]


def cmd_tenants_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(platform: Platform) -> int:
        routed = await operator(platform)
        records = await _all_tenants(platform, routed, args.status)
        _print_tenants(records, json=args.json)
        return 0

    return run(settings, work)


def cmd_tenants_create(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.queries import NewTenant, create_subtenant, managed_tenant

    async def work(platform: Platform) -> int:
        routed = await operator(platform)
        async with transaction(platform.db.app) as tx:
            if args.parent != MANAGEMENT_TENANT_ID:
                parent = await managed_tenant(platform, tx, routed, args.parent)
                routed = await platform.gate.operator(tx, parent.id)
            record = await create_subtenant(platform, tx, routed, NewTenant(
                domain=args.domain, company=args.company, admin_email=args.admin_email, kind=args.kind,
                admin_password=args.admin_password, template=args.template,
            ))
        _print_tenants([record], json=args.json)
        return 0

    return run(settings, work)


def _print_tenants(records: list[TenantRecord], *, json: bool) -> None:
    """A table, or with --json one object per line named as GraphQL's `Tenant` fields are."""
    if not json:
        console.print(_tenant_table(records))
        return
    for r in records:
        sys.stdout.write(orjson.dumps({"id": r.id, "domain": r.domain, "company": r.company, "kind": r.kind,
                                       "status": r.status, "parentId": r.parent_id, "depth": r.depth,
                                       "schemaVersion": r.schema_version, "createdAt": r.created_at}).decode() + "\n")


def lifecycle_command(action: str) -> Callable[[Settings, argparse.Namespace], int]:
    def command(settings: Settings, args: argparse.Namespace) -> int:
        from app.services.tenants import queries as service

        async def work(platform: Platform) -> int:
            routed = await operator(platform)
            fn = service.suspend_tenant if action == "suspend" else service.activate_tenant
            async with transaction(platform.db.app) as tx:
                record = await fn(platform, tx, routed, args.tenant_id)
            _print_tenants([record], json=args.json)
            return 0

        return run(settings, work)

    return command


def cmd_tenants_delete(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.queries import delete_tenant

    async def work(platform: Platform) -> int:
        routed = await operator(platform)
        async with transaction(platform.db.app) as tx:
            await delete_tenant(platform, tx, routed, args.tenant_id)
        console.print(f"tenant {args.tenant_id}: deleted (schema and role dropped; usage history kept)")
        return 0

    return run(settings, work)


def cmd_tenants_placement(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.placement import tenant_placements

    async def work(platform: Platform) -> int:
        routed = await operator(platform)
        ids = args.tenant_id or [r.id for r in await _all_tenants(platform, routed) if r.status != "DELETED"]
        rows = []
        for start in range(0, len(ids), 500):  # one round trip per node and 500 tenants
            batch = ids[start:start + 500]
            async with transaction(platform.db.app) as tx:
                found = await tenant_placements(platform, tx, routed, batch)
            rows += [(t, found[t]) for t in batch if t in found]
        if args.json:
            for tenant_id, p in rows:
                sys.stdout.write(orjson.dumps({"id": tenant_id, "node": p.node, "sizeBytes": p.size_bytes}).decode()
                                 + "\n")
            return 0
        table = Table("id", "node", "size")
        for tenant_id, p in rows:
            table.add_row(tenant_id, p.node or "(this server)", _size(p.size_bytes))
        console.print(table)
        per_node: dict[str, list[int]] = {}
        for _, p in rows:
            per_node.setdefault(p.node or "(this server)", []).append(p.size_bytes)
        for node, sizes in sorted(per_node.items()):
            console.print(f"{node}: {len(sizes)} tenants, {_size(sum(sizes))}", highlight=False)
        return 0

    return run(settings, work)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value, unit = float(n) / 1024, "kB"
    for bigger in ("MB", "GB", "TB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _move_progress(out: Console) -> Callable[[Any], None]:
    """A move's progress as Citus reports it: a line per phase change (and every ~2 s while copying)."""
    last: list[Any] = [None, 0.0]

    def show(p: Any) -> None:
        now = time.monotonic()
        if p.phase != last[0] or now - last[1] >= 2.0:
            last[0], last[1] = p.phase, now
            out.print(f"  {p.phase}: {_size(p.copied_bytes)} of {_size(p.total_bytes)} copied", highlight=False)

    return show


def cmd_tenants_move(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.placement import move_tenant

    async def work(platform: Platform) -> int:
        routed = await operator(platform)
        err.print(f"moving {args.tenant_id} to {args.node} (online: reads go on, writes wait for the last catch-up)")
        moved = await move_tenant(platform, routed, args.tenant_id, args.node, on_progress=_move_progress(err))
        console.print(f"tenant {moved.tenant_id}: moved {moved.source} -> {moved.target}, {_size(moved.size_bytes)} "
                      f"in {moved.seconds:.1f} s; longest write stall {moved.longest_write_stall_ms:.0f} ms",
                      highlight=False)
        return 0

    return run(settings, work)


def cmd_tenants_rebalance(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.placement import Moved, rebalance

    async def work(platform: Platform) -> int:
        routed = await operator(platform)
        count = [0, 0]

        def planned(plan: list[tuple[str, str]]) -> None:
            count[1] = len(plan)
            console.print(f"rebalance by {args.by}: {len(plan)} schema move(s)", highlight=False)
            if args.dry_run:
                for schema, target in plan:
                    console.print(f"  {schema.removeprefix('t_')} -> {target}", highlight=False)

        def moved(m: Moved) -> None:
            count[0] += 1
            console.print(f"[{count[0]}/{count[1]}] {m.tenant_id}: {m.source} -> {m.target}, {_size(m.size_bytes)} "
                          f"in {m.seconds:.1f} s, longest write stall {m.longest_write_stall_ms:.0f} ms",
                          highlight=False)

        await rebalance(platform, routed, by=args.by, dry_run=args.dry_run, on_plan=planned, on_moved=moved,
                        on_progress=_move_progress(err))
        return 0

    return run(settings, work)
