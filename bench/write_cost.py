"""What one createDevice costs PostgreSQL, statement by statement, alone and under contention.

    python -m bench.write_cost [N] [--connections C]

createDevice sends two round trips: BEGIN, the role switch and the INSERT; then, with COMMIT,
its audit row, the change log's queue, head and entry, and the wake-up of the log's readers
(app.access.acting). This captures exactly the steps the app sends for one createDevice (as
prepared on the connection, app.db.prepared), then runs subsets of them, N transactions each
(default 2,000) shared out over C connections of the app's pool writing the one tenant at once
(default 1; with 32, take N = 20,000: CPU is counted in clock ticks per backend), and
prints the CPU PostgreSQL used a transaction, the transactions a second, and the ratio to the
bare INSERT in the same run: what the audit row, the log and its wake-up add to a write, what
the log's queue saves when writers contend for its head (app.db.notify), and what the second
round trip costs. Interleaved over three rounds (the lowest of each is printed): the machine is
shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from app.db import prepared
from app.db.transaction import libpq_connection
from bench.common import bench_platform, run_as_served
from bench.peer import _pg_cpu, _pg_delta

Step = tuple[str, bool]
CREATE = 'mutation { createDevice(input: {name: "new", type: "meter"}) { id name } }'


async def _captured(b: Any, token: str, tenant: str) -> list[tuple[list[Step], dict[str, Any]]]:
    """The round trips (steps and options) of one createDevice, as the app sent them."""
    sent: list[tuple[list[Step], dict[str, Any]]] = []
    original = prepared.round_trip

    async def recording(driver: Any, steps: Sequence[Step], **options: Any) -> list[Any]:
        sent.append((list(steps), options))
        return await original(driver, steps, **options)

    prepared.round_trip = recording
    try:
        await b.gql(CREATE, token=token, tenant=tenant)
    finally:
        prepared.round_trip = original
    return sent


def _variants(trips: list[tuple[list[Step], dict[str, Any]]]) -> dict[str, list[list[Step]]]:
    first, commit = trips[-2][0], trips[-1][0]
    begin = [step for step in first if step[0] == "BEGIN"] or [("BEGIN", False)]
    start, insert = [*begin, *(s for s in first if s[0] != "BEGIN" and not s[1])], [s for s in first if s[1]]
    switch, audit, queue, head, append, wake = commit[:-1]
    done: Step = ("COMMIT", False)
    return {
        "BEGIN, role switch, COMMIT": [[*start, done]],
        "+ INSERT (the bare write)": [[*start, *insert, done]],
        "+ audit row": [[*start, *insert, audit, done]],
        "+ change log, unqueued": [[*start, *insert, head, append, done]],
        "+ change log (queue, head, entry)": [[*start, *insert, queue, head, append, done]],
        "+ wake-up (NOTIFY)": [[*start, *insert, wake, done]],
        "all of it, one round trip": [[*start, *insert, switch, audit, queue, head, append, wake, done]],
        "as the app sends it (two)": [[*start, *insert], [switch, audit, queue, head, append, wake, done]],
    }


async def _rate(drivers: list[Any], round_trips: list[list[Step]], n: int) -> tuple[float, float]:
    """(PostgreSQL CPU seconds a transaction, transactions a second) of `n` transactions shared out
    over `drivers`, all at once."""
    async def run(driver: Any, count: int) -> None:
        for _ in range(count):
            for steps in round_trips:
                await prepared.round_trip(driver, steps, whole=False)

    await asyncio.gather(*(run(driver, 50) for driver in drivers))  # the shapes prepared, the plans cached
    each = max(1, n // len(drivers))
    pg, began = _pg_cpu(), time.perf_counter()
    await asyncio.gather(*(run(driver, each) for driver in drivers))
    elapsed, done = time.perf_counter() - began, each * len(drivers)
    return _pg_delta(pg) / done, done / elapsed


async def main(n: int, connections: int) -> None:
    async with bench_platform(pool_size=max(10, connections + 2)) as b:
        tenant, tenant_token = await b.subtenant("cost")
        variants = _variants(await _captured(b, tenant_token, tenant))
        best: dict[str, tuple[float, float]] = {}
        async with contextlib.AsyncExitStack() as stack:
            drivers = []
            for _ in range(connections):
                driver = await libpq_connection(await stack.enter_async_context(b.platform.db.app.connect()))
                await driver.set_autocommit(True)
                drivers.append(driver)
            for _ in range(3):
                for label, round_trips in variants.items():
                    used, rate = await _rate(drivers, round_trips, n)
                    best[label] = min(best.get(label, (used, rate)), (used, rate))
        bare = best["+ INSERT (the bare write)"][0]
        print(f"createDevice's statements on {connections} connection(s) writing one tenant, "
              f"PostgreSQL CPU a transaction (lowest of 3 x {n}):")
        for label, (used, rate) in best.items():
            print(f"  {label:34s} {used * 1000:.3f} ms  {rate:7.0f} tx/s  {used / bare:.2f}x the bare INSERT")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="What one createDevice costs PostgreSQL.")
    parser.add_argument("n", nargs="?", type=int, default=2000, help="transactions a variant, a round")
    parser.add_argument("--connections", type=int, default=1, help="connections writing at once")
    args = parser.parse_args()
    run_as_served(main(args.n, max(1, args.connections)))
