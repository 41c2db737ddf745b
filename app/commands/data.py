"""`tenantry retention run` and `tenantry usage snapshot|export`."""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from app.commands.common import console, operator, run, working
from app.runtime.platform import Platform
from app.settings import Settings


def cmd_retention_run(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.data.retention import apply_to_all

    async def work(platform: Platform) -> int:
        table = Table("tenant", "measurements", "events", "alarms", "operations")

        def row(tenant_id: str, deleted: dict[str, int]) -> None:
            if any(deleted.values()):
                table.add_row(tenant_id, *(str(deleted[k]) for k in ("MEASUREMENT", "EVENT", "ALARM", "OPERATION")))

        with working("applying retention rules: tenants done") as tick:
            def progress(tenant_id: str, deleted: dict[str, int]) -> None:
                row(tenant_id, deleted)
                tick(1)

            totals = await apply_to_all(platform.db.app, batch_size=args.batch_size, progress=progress)
        console.print(table)
        console.print(f"deleted: {totals}")
        return 0

    return run(settings, work)


def cmd_usage_snapshot(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from app.services.usage.statistics import close_days, take_snapshots, utc_today_date

    async def work(platform: Platform) -> int:
        today = utc_today_date()
        with working("taking usage snapshots"):
            taken = await take_snapshots(platform.db.app, today=today, warning_ratio=settings.limit_warning_ratio)
            closed = await close_days(platform.db.app, through=today - timedelta(days=1))
        console.print(f"usage snapshots taken for {taken} tenants; days closed through {closed}")
        return 0

    return run(settings, work)


def cmd_usage_export(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.usage.export import ExportOptions, export

    async def work(platform: Platform) -> int:
        routed = await operator(platform)
        options = ExportOptions(start=args.start, end=args.end, granularity=args.granularity, fmt=args.format,
                                separator=args.separator, decimal=args.decimal)
        out = sys.stdout.buffer
        with working("exporting usage: bytes written") as tick:
            async for chunk in export(platform.db.app, routed, options):
                out.write(chunk)
                tick(len(chunk))
        out.flush()
        return 0

    return run(settings, work)
