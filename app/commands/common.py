"""What the operator's commands share: the consoles, running work on a platform, the operator's
routing, a spinner for long work and the tenant table."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator

from rich.console import Console
from rich.progress import (
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from app.access.principal import Routed
from app.db.transaction import transaction
from app.runtime.platform import Platform
from app.settings import Settings

# Piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def run(settings: Settings, work: Callable[[Platform], Awaitable[int]]) -> int:
    async def main() -> int:
        platform = Platform.create(settings)
        try:
            return await work(platform)
        finally:
            await platform.close()

    return asyncio.run(main())


async def operator(platform: Platform) -> Routed:
    async with transaction(platform.db.app) as tx:
        return await platform.gate.operator(tx)


@contextlib.contextmanager
def working(what: str) -> Iterator[Callable[[int], None]]:
    """A spinner on standard error (standard output stays clean for exports and --json) with a
    running count, for commands that may take more than a second."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f}"),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task(what, total=None)
        yield lambda n: progress.advance(task, n)
