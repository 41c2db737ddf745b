"""`tenantry`: serve, migrate, bootstrap, manage tenants and export the schema from the shell."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import shutil
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy import exc as sa_exc

from app.commands.common import console, err, run, working
from app.commands.data import cmd_retention_run, cmd_usage_export, cmd_usage_snapshot
from app.commands.tenants import (
    cmd_tenants_create,
    cmd_tenants_delete,
    cmd_tenants_list,
    cmd_tenants_move,
    cmd_tenants_placement,
    cmd_tenants_rebalance,
    lifecycle_command,
)
from app.commands.users import cmd_users_list, cmd_users_reset_password, disabled_command
from app.db.naming import MANAGEMENT_TENANT_ID
from app.errors import AppError
from app.http.protocol import GuardedHttpToolsProtocol
from app.logs import configure_logging
from app.runtime.platform import Platform
from app.settings import Settings
from app.stopping import stop_requested

# uvicorn's sans-I/O protocol on the `websockets` package (its legacy one is deprecated). Without
# permessage-deflate: subscription messages are small, and a compressor per connection cost
# ~25 us a message and most of a connection's memory (bench/realtime.py).
WEBSOCKETS = "websockets-sansio"
SHUTDOWN_GRACE_SECONDS = 8


# --- commands ------------------------------------------------------------------------------------


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How `tenantry serve` runs uvicorn. A client's address (login throttling, audit) comes from
    X-Forwarded-For only when the peer is a proxy the operator lists (TENANTRY_TRUSTED_PROXIES):
    uvicorn's default trusts any client on 127.0.0.1, and rotating the header reset the throttle.
    A WebSocket message is a request: the request body's size limit, refused before it is parsed."""
    trusted = ",".join(settings.trusted_proxies)
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None,
            "ws_max_size": settings.max_body_bytes, "log_config": None,
            # access_log off: the app writes one structured line per GraphQL request (tenantry.access).
            "access_log": False, "ws": WEBSOCKETS, "ws_per_message_deflate": False,
            # A stop waits this long for open requests (SSE streams end at once: app.stopping), then
            # cancels them: a rolling restart never hangs until the supervisor's kill.
            "timeout_graceful_shutdown": SHUTDOWN_GRACE_SECONDS,
            "http": GuardedHttpToolsProtocol}


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    GuardedHttpToolsProtocol.header_timeout = settings.header_timeout_seconds

    from app.main import create_app

    host, port = args.host or settings.host, args.port or settings.port
    workers = args.workers or settings.workers
    base = (settings.public_url or f"http://{host}:{port}").rstrip("/")
    logging.getLogger("tenantry").info(
        "GraphQL at %s/graphql (one tenant's own: %s/t/<tenant>/graphql; WebSocket and SSE on the same URLs), "
        "console at %s/console/%s", base, base, base, f", GraphiQL at {base}/graphiql/" if settings.graphiql else "")
    if workers > 1:
        # Every worker writes its metrics here and a scrape adds them all up (prometheus_client's
        # multiprocess mode); emptied at each start so a counter never carries a dead run's values.
        metrics_dir = settings.data_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        # Worker processes build their own app from the environment; the registry cache's
        # one-second TTL keeps them in step (a suspension reaches every worker within it).
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers,
                    **uvicorn_options(settings))
    else:
        uvicorn.run(create_app(settings, stop_requested=stop_requested), host=host, port=port,
                    **uvicorn_options(settings))
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

    return run(settings, work)


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
        with working("bootstrapping the management tenant"):
            result = await bootstrap(platform)
        state = "created" if result.created_tenant else "already present"
        console.print(f"management tenant: {state}; admin: {result.admin_email}")
        if result.generated_password:
            console.print(f"[bold yellow]generated admin password (shown once):[/bold yellow] "
                          f"{result.generated_password}")
        return 0

    return run(settings, work)


def cmd_export_schema(settings: Settings, args: argparse.Namespace) -> int:
    from app.graphql.schema import build_schema

    sdl = build_schema().as_str() + "\n"
    if args.output == "-":
        sys.stdout.write(sdl)
    else:
        Path(args.output).write_text(sdl)
        console.print(f"wrote {args.output}")
    return 0


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

    _tenant_commands(sub)
    _user_commands(sub)
    _data_commands(sub)
    return p


def _tenant_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    create.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    create.set_defaults(fn=cmd_tenants_create)
    for action in ("suspend", "activate"):
        cmd = tenants.add_parser(action, help=f"{action} a tenant (and its subtree)")
        cmd.add_argument("tenant_id", help="the tenant's id (t + nine digits)")
        cmd.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
        cmd.set_defaults(fn=lifecycle_command(action))
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


def _user_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        cmd.set_defaults(fn=disabled_command(disabled))


def _data_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    usage_export.add_argument("--json", action="store_const", const="json", dest="format",
                              help="JSON lines (named as GraphQL's TenantUsageSummary fields) instead of CSV")
    usage_export.add_argument("--format", choices=["csv", "json"], default="csv", help="CSV, or json as --json does")
    usage_export.add_argument("--separator", default=",", help="CSV field separator (one character)")
    usage_export.add_argument("--decimal", choices=[".", ","], default=".", help="decimal mark in CSV")
    usage_export.set_defaults(fn=cmd_usage_export)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    try:
        code: int = args.fn(settings, args)
    except AppError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
    except (sa_exc.OperationalError, sa_exc.InterfaceError, psycopg.OperationalError, OSError) as exc:
        # The database went away (or never answered): one line saying so, not a traceback.
        cause = getattr(exc, "orig", None) or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        err.print(f"[red]error:[/red] the database cannot be reached: {escape(first)}", highlight=False, soft_wrap=True)
        return 2
    return code



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
