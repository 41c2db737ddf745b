"""`tenantry`: serve, migrate, bootstrap, manage tenants and export the schema from the shell."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import secrets
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from app.access.principal import Routed
from app.db.naming import MANAGEMENT_TENANT_ID
from app.db.transaction import transaction
from app.errors import AppError
from app.logs import configure_logging
from app.runtime.platform import Platform
from app.settings import Settings
from app.stopping import stop_requested
from app.tenancy.registry import TenantRecord

# uvicorn's sans-I/O protocol on the `websockets` package (its legacy one is deprecated). Without
# permessage-deflate: subscription messages are small, and a compressor per connection cost
# ~25 us a message and most of a connection's memory (bench/realtime.py).
WEBSOCKETS = "websockets-sansio"

# Piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _run(settings: Settings, work: Callable[[Platform], Awaitable[int]]) -> int:
    async def main() -> int:
        platform = Platform.create(settings)
        try:
            return await work(platform)
        finally:
            await platform.close()

    return asyncio.run(main())


async def _operator(platform: Platform) -> Routed:
    async with transaction(platform.db.app) as tx:
        return await platform.gate.operator(tx)


# --- commands ------------------------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    host, port = args.host or settings.host, args.port or settings.port
    workers = args.workers or settings.workers
    if workers > 1:
        # Every worker writes its metrics here and a scrape adds them all up (prometheus_client's
        # multiprocess mode); emptied at each start so a counter never carries a dead run's values.
        metrics_dir = settings.data_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        # Worker processes build their own app from the environment; the registry cache's
        # one-second TTL keeps them in step (a suspension reaches every worker within it).
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers, log_config=None,
                    proxy_headers=True, access_log=False, ws=WEBSOCKETS,
                    ws_per_message_deflate=False)
    else:
        # access_log off: the app writes one structured line per GraphQL request (tenantry.access).
        uvicorn.run(create_app(settings, stop_requested=stop_requested), host=host, port=port, log_config=None,
                    proxy_headers=True, access_log=False, ws=WEBSOCKETS,
                    ws_per_message_deflate=False)
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.db.engines import app_role_password
    from app.tenancy.migrate import migrate_management, migrate_tenants

    async def work(platform: Platform) -> int:
        await migrate_management(platform.db.owner, settings, app_role_password(settings))
        console.print("management schema: [green]at head[/green]")
        meter = _MigrationProgress(err)
        with meter:
            report = await migrate_tenants(platform.db.owner, app_role=settings.app_role,
                                           parallel=args.parallel, progress=meter.done, total=meter.start,
                                           only=args.tenant or None)
        console.print(f"tenant schemas at {report.head}: {len(report.migrated)} migrated, "
                      f"{len(report.current)} already current, {len(report.failed)} failed")
        for tenant_id, error in sorted(report.failed.items()):
            err.print(f"[red]failed[/red] {tenant_id}: {error}")
        return 1 if report.failed else 0

    return _run(settings, work)


class _MigrationProgress:
    """`tenantry migrate`'s progress: a bar with count and ETA on a terminal, else a plain line
    every 5 seconds (and at the end), so logs of a long rollout show it advancing."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.count = self.failed = self.total = 0
        self.started = self.last_line = time.monotonic()
        self.bar: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> _MigrationProgress:
        if self.out.is_terminal:
            self.bar = Progress(SpinnerColumn(), TextColumn("tenant schemas"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=self.out, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("migrate", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        elif self.total:
            self._line()

    def start(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.update(self.task, total=total)

    def done(self, tenant_id: str, error: str | None) -> None:
        self.count += 1
        self.failed += error is not None
        if self.bar is not None:
            self.bar.advance(self.task)
        elif time.monotonic() - self.last_line >= 5.0:
            self._line()

    def _line(self) -> None:
        self.last_line = now = time.monotonic()
        elapsed = now - self.started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - self.count) / rate:.0f} s" if rate > 0 and self.count < self.total else "-"
        self.out.print(f"migrate: {self.count}/{self.total} tenant schemas, {self.failed} failed, "
                       f"{elapsed:.0f} s elapsed, ETA {eta}", highlight=False)


def cmd_bootstrap(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.bootstrap import bootstrap

    async def work(platform: Platform) -> int:
        with _working("bootstrapping the management tenant"):
            result = await bootstrap(platform)
        state = "created" if result.created_tenant else "already present"
        console.print(f"management tenant: {state}; admin: {result.admin_email}")
        if result.generated_password:
            console.print(f"[bold yellow]generated admin password (shown once):[/bold yellow] "
                          f"{result.generated_password}")
        return 0

    return _run(settings, work)


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
        routed = await _operator(platform)
        records = await _all_tenants(platform, routed, args.status)
        if args.json:
            for r in records:
                sys.stdout.write(orjson.dumps({"id": r.id, "domain": r.domain, "company": r.company, "kind": r.kind,
                                               "status": r.status, "parentId": r.parent_id, "depth": r.depth,
                                               "schemaVersion": r.schema_version,
                                               "createdAt": r.created_at}).decode() + "\n")
        else:
            console.print(_tenant_table(records))
        return 0

    return _run(settings, work)


def cmd_tenants_create(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.queries import NewTenant, create_subtenant, managed_tenant

    async def work(platform: Platform) -> int:
        routed = await _operator(platform)
        async with transaction(platform.db.app) as tx:
            if args.parent != MANAGEMENT_TENANT_ID:
                parent = await managed_tenant(platform, tx, routed, args.parent)
                routed = await platform.gate.operator(tx, parent.id)
            record = await create_subtenant(platform, tx, routed, NewTenant(
                domain=args.domain, company=args.company, admin_email=args.admin_email, kind=args.kind,
                admin_password=args.admin_password, template=args.template,
            ))
        console.print(_tenant_table([record]))
        return 0

    return _run(settings, work)


def _lifecycle(action: str) -> Callable[[Settings, argparse.Namespace], int]:
    def command(settings: Settings, args: argparse.Namespace) -> int:
        from app.services.tenants import queries as service

        async def work(platform: Platform) -> int:
            routed = await _operator(platform)
            fn = service.suspend_tenant if action == "suspend" else service.activate_tenant
            async with transaction(platform.db.app) as tx:
                record = await fn(platform, tx, routed, args.tenant_id)
            console.print(_tenant_table([record]))
            return 0

        return _run(settings, work)

    return command


def cmd_tenants_delete(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.queries import delete_tenant

    async def work(platform: Platform) -> int:
        routed = await _operator(platform)
        async with transaction(platform.db.app) as tx:
            await delete_tenant(platform, tx, routed, args.tenant_id)
        console.print(f"tenant {args.tenant_id}: deleted (schema and role dropped; usage history kept)")
        return 0

    return _run(settings, work)


def cmd_tenants_placement(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.placement import tenant_placements

    async def work(platform: Platform) -> int:
        routed = await _operator(platform)
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

    return _run(settings, work)


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
        routed = await _operator(platform)
        err.print(f"moving {args.tenant_id} to {args.node} (online: reads go on, writes wait for the last catch-up)")
        moved = await move_tenant(platform, routed, args.tenant_id, args.node, on_progress=_move_progress(err))
        console.print(f"tenant {moved.tenant_id}: moved {moved.source} -> {moved.target}, {_size(moved.size_bytes)} "
                      f"in {moved.seconds:.1f} s; longest write stall {moved.longest_write_stall_ms:.0f} ms",
                      highlight=False)
        return 0

    return _run(settings, work)


def cmd_tenants_rebalance(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.tenants.placement import Moved, rebalance

    async def work(platform: Platform) -> int:
        routed = await _operator(platform)
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

    return _run(settings, work)


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.sessions.accounts import list_users

    async def work(platform: Platform) -> int:
        async with transaction(platform.db.app) as tx:
            found = await list_users(tx)
        if args.json:
            for u in found:
                sys.stdout.write(orjson.dumps({"id": str(u.id), "email": u.email, "createdAt": u.created_at,
                                               "lastLoginAt": u.last_login_at, "disabled": u.disabled,
                                               "memberships": u.memberships}).decode() + "\n")
            return 0
        table = Table("id", "email", "memberships", "last login", "disabled")
        for u in found:
            table.add_row(str(u.id), u.email, str(u.memberships),
                          u.last_login_at.isoformat(timespec="seconds") if u.last_login_at else "-",
                          "yes" if u.disabled else "")
        console.print(table)
        return 0

    return _run(settings, work)


def cmd_users_reset_password(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.sessions.accounts import operator_set_password

    password = args.password or secrets.token_urlsafe(12)

    async def work(platform: Platform) -> int:
        async with transaction(platform.db.app) as tx:
            user = await operator_set_password(platform, tx, email=args.email, password=password)
        console.print(f"{user.email}: password set; every session of this user ended")
        if not args.password:
            console.print(f"generated password (shown once): {password}")
        return 0

    return _run(settings, work)


def _users_disabled(disabled: bool) -> Callable[[Settings, argparse.Namespace], int]:
    def command(settings: Settings, args: argparse.Namespace) -> int:
        from app.services.sessions.accounts import set_disabled

        async def work(platform: Platform) -> int:
            async with transaction(platform.db.app) as tx:
                user = await set_disabled(platform, tx, email=args.email, disabled=disabled)
            console.print(f"{user.email}: {'disabled (sessions ended, API tokens stopped)' if disabled else 'enabled'}")
            return 0

        return _run(settings, work)

    return command


def cmd_retention_run(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.data.retention import apply_to_all

    async def work(platform: Platform) -> int:
        table = Table("tenant", "measurements", "events", "alarms", "operations")

        def row(tenant_id: str, deleted: dict[str, int]) -> None:
            if any(deleted.values()):
                table.add_row(tenant_id, *(str(deleted[k]) for k in ("MEASUREMENT", "EVENT", "ALARM", "OPERATION")))

        with _working("applying retention rules: tenants done") as tick:
            def progress(tenant_id: str, deleted: dict[str, int]) -> None:
                row(tenant_id, deleted)
                tick(1)

            totals = await apply_to_all(platform.db.app, batch_size=args.batch_size, progress=progress)
        console.print(table)
        console.print(f"deleted: {totals}")
        return 0

    return _run(settings, work)


def cmd_usage_snapshot(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.usage.statistics import take_snapshots, utc_today_date

    async def work(platform: Platform) -> int:
        with _working("taking usage snapshots"):
            taken = await take_snapshots(platform.db.app, today=utc_today_date(),
                                         warning_ratio=settings.limit_warning_ratio)
        console.print(f"usage snapshots taken for {taken} tenants")
        return 0

    return _run(settings, work)


def cmd_usage_export(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.usage.export import ExportOptions, export

    async def work(platform: Platform) -> int:
        routed = await _operator(platform)
        options = ExportOptions(start=args.start, end=args.end, granularity=args.granularity, fmt=args.format,
                                separator=args.separator, decimal=args.decimal)
        out = sys.stdout.buffer
        with _working("exporting usage: bytes written") as tick:
            async for chunk in export(platform.db.app, routed, options):
                out.write(chunk)
                tick(len(chunk))
        out.flush()
        return 0

    return _run(settings, work)


def cmd_export_schema(settings: Settings, args: argparse.Namespace) -> int:
    from app.graphql.schema import build_schema

    sdl = build_schema().as_str() + "\n"
    if args.output == "-":
        sys.stdout.write(sdl)
    else:
        Path(args.output).write_text(sdl)
        console.print(f"wrote {args.output}")
    return 0


@contextlib.contextmanager
def _working(what: str) -> Iterator[Callable[[int], None]]:
    """A spinner on standard error (standard output stays clean for exports and --json) with a
    running count, for commands that may take more than a second."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f}"),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task(what, total=None)
        yield lambda n: progress.advance(task, n)


def _version() -> str:
    try:
        return importlib.metadata.version("tenantry")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tenantry", description="Tenantry: multi-tenant GraphQL backend for IoT. "
                                "Configuration comes from TENANTRY_* environment variables (see README).")
    p.add_argument("--version", action="version", version=f"tenantry {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve GraphQL on TENANTRY_HOST:TENANTRY_PORT")
    serve.add_argument("--host", help="address to listen on (default TENANTRY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default TENANTRY_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default TENANTRY_WORKERS or 1)")
    serve.set_defaults(fn=cmd_serve)
    migrate = sub.add_parser("migrate", help="migrate the management schema, then every tenant schema")
    migrate.add_argument("--parallel", type=int, default=4, help="tenant schemas migrated at once")
    migrate.add_argument("--tenant", action="append", metavar="ID",
                         help="only this tenant (repeatable): a canary before the whole rollout")
    migrate.set_defaults(fn=cmd_migrate)
    sub.add_parser("bootstrap", help="create the management tenant and its first admin").set_defaults(
        fn=cmd_bootstrap)
    export = sub.add_parser("export-schema", help="print or write the GraphQL SDL")
    export.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    export.set_defaults(fn=cmd_export_schema)

    tenants = sub.add_parser("tenants", help="manage tenants as the operator").add_subparsers(
        dest="tenants_command", required=True)
    listing = tenants.add_parser("list", help="every tenant in a table")
    listing.add_argument("--status", choices=["ACTIVE", "SUSPENDED", "DELETED"], help="only tenants in this state")
    listing.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    listing.set_defaults(fn=cmd_tenants_list)
    create = tenants.add_parser("create", help="provision a tenant")
    create.add_argument("--domain", required=True, help="unique domain, [a-z0-9-]{2,63}")
    create.add_argument("--company", required=True, help="the company's name")
    create.add_argument("--admin-email", required=True, help="first admin (an existing user, or a new one)")
    create.add_argument("--admin-password", help="password of a new admin (without it: a mailed invitation)")
    create.add_argument("--kind", choices=["ENTERPRISE", "STANDARD"], default="STANDARD",
                        help="ENTERPRISE tenants may create subtenants (default STANDARD)")
    create.add_argument("--parent", default=MANAGEMENT_TENANT_ID, help="parent tenant id")
    create.add_argument("--template", help="tenant template (tenant_templates/*.json; default: by kind)")
    create.set_defaults(fn=cmd_tenants_create)
    for action in ("suspend", "activate"):
        cmd = tenants.add_parser(action, help=f"{action} a tenant (and its subtree)")
        cmd.add_argument("tenant_id", help="the tenant's id (t + nine digits)")
        cmd.set_defaults(fn=_lifecycle(action))
    placement = tenants.add_parser("placement", help="the node holding each tenant (Citus) and its size")
    placement.add_argument("tenant_id", nargs="*", help="only these tenants (default: all)")
    placement.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    placement.set_defaults(fn=cmd_tenants_placement)
    move = tenants.add_parser("move", help="move a tenant to another Citus node online (citus_schema_move)")
    move.add_argument("tenant_id", help="the tenant's id (t + nine digits)")
    move.add_argument("--node", required=True, help="the target node, host:port as Citus knows it")
    move.set_defaults(fn=cmd_tenants_move)
    balance = tenants.add_parser("rebalance", help="even out the Citus nodes, one tenant move at a time")
    balance.add_argument("--by", choices=["size", "count"], default="size", help="balance bytes or tenants")
    balance.add_argument("--dry-run", action="store_true", help="print the plan, move nothing")
    balance.set_defaults(fn=cmd_tenants_rebalance)
    delete = tenants.add_parser("delete", help="drop a leaf tenant's schema and role (its usage history stays)")
    delete.add_argument("tenant_id", help="the tenant's id (t + nine digits)")
    delete.set_defaults(fn=cmd_tenants_delete)

    users = sub.add_parser("users", help="manage user accounts as the operator").add_subparsers(
        dest="users_command", required=True)
    users_list = users.add_parser("list", help="every user, with memberships and last login")
    users_list.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    users_list.set_defaults(fn=cmd_users_list)
    reset = users.add_parser("reset-password", help="set a user's password (ends their sessions)")
    reset.add_argument("email", help="the user's email")
    reset.add_argument("--password", help="the new password (default: generated and printed once)")
    reset.set_defaults(fn=cmd_users_reset_password)
    for name, disabled in (("disable", True), ("enable", False)):
        cmd = users.add_parser(name, help=f"{name} a user (disable: no sign-in anywhere, sessions and API "
                                          "tokens stop)" if disabled else f"{name} a disabled user")
        cmd.add_argument("email", help="the user's email")
        cmd.set_defaults(fn=_users_disabled(disabled))
    retention = sub.add_parser("retention", help="data retention").add_subparsers(dest="retention_command",
                                                                                    required=True)
    run_retention = retention.add_parser("run", help="apply every tenant's retention rules now")
    run_retention.add_argument("--batch-size", type=int, default=5000, help="rows deleted per transaction")
    run_retention.set_defaults(fn=cmd_retention_run)
    usage = sub.add_parser("usage", help="usage metering").add_subparsers(dest="usage_command", required=True)
    usage.add_parser("snapshot", help="take today's usage snapshots now").set_defaults(fn=cmd_usage_snapshot)
    usage_export = usage.add_parser("export", help="every tenant's usage as CSV or JSON lines on stdout")
    usage_export.add_argument("--from", dest="start", type=date.fromisoformat, required=True,
                              help="first day, YYYY-MM-DD")
    usage_export.add_argument("--to", dest="end", type=date.fromisoformat, required=True,
                              help="last day (inclusive), YYYY-MM-DD")
    usage_export.add_argument("--granularity", choices=["day", "month", "total"], default="day",
                              help="one row per tenant and day, month, or the whole range")
    usage_export.add_argument("--format", choices=["csv", "json"], default="csv", help="CSV or JSON lines")
    usage_export.add_argument("--separator", default=",", help="CSV field separator (one character)")
    usage_export.add_argument("--decimal", choices=[".", ","], default=".", help="decimal mark in CSV")
    usage_export.set_defaults(fn=cmd_usage_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    try:
        code: int = args.fn(settings, args)
    except AppError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
    return code



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
