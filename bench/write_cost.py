"""What one createDevice costs PostgreSQL, statement by statement, alone and under contention.

    python -m bench.write_cost [N] [--connections C] [--tenants K]

createDevice sends two round trips: BEGIN, the role switch and the INSERT; then, with COMMIT,
its audit row and the change log's queue, head and entry (app.access.acting); once committed,
its tenant goes to the process's waker, which wakes the log's readers (app.db.wakes; its NOTIFYs
are counted with the writes, and compared with the NOTIFY a request used to send with its
COMMIT). This captures exactly the steps the app sends for one createDevice (as
prepared on the connection, app.db.prepared), then runs subsets of them, N transactions each
(default 2,000) shared out over C connections of the app's pool writing at once (default 1; with
32, take N = 20,000: CPU is counted in clock ticks per backend), connection i writing tenant
i mod K (default K = 1: all of them the one tenant), and prints the CPU PostgreSQL used a
transaction, the transactions a second, and the ratio to the bare INSERT in the same run: what
the audit row, the log and its wake-up add to a write, and what the log's queue saves when writers
contend for its head (app.db.notify).

The queue alone, held to COMMIT, is measured with and without waiting for the WAL flush
(`synchronous_commit = off`): one tenant's writers commit one at a time, so each flushed the WAL
on its own where unqueued commits share a flush; spread over K tenants, they share it again. So
the app groups them (app.db.wakes): "as the app sends it" commits through the platform's real
waker, unflushed when another commit is under way and counted done only once the waker's flush
has made it durable, against "each COMMIT flushed". Interleaved over three rounds (the lowest
of each is printed): the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from app.db import prepared
from app.db.notify import wake_sql
from app.db.transaction import libpq_connection
from app.db.wakes import GROUPED, Waker
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


# A variant: its round trips, and what the platform's waker (app.db.wakes) is then told once the
# COMMIT has succeeded: nothing (None), to wake the tenant's readers ("wake"), or that and to make
# the commit, sent unflushed, durable before it counts as done ("durable": grouped, as the app does).
Variant = tuple[list[list[Step]], str | None]


def _variants(trips: list[tuple[list[Step], dict[str, Any]]], tenant: str) -> dict[str, Variant]:
    first, commit = trips[-2][0], [step for step in trips[-1][0] if step != GROUPED]
    begin = [step for step in first if step[0] == "BEGIN"] or [("BEGIN", False)]
    start, insert = [*begin, *(s for s in first if s[0] != "BEGIN" and not s[1])], [s for s in first if s[1]]
    switch, audit, queue, head, append = commit[:-1]
    wake: Step = (wake_sql([tenant]), False)  # what a request sent with its COMMIT before the waker
    done: Step = ("COMMIT", False)
    return {
        "BEGIN, role switch, COMMIT": ([[*start, done]], None),
        "+ INSERT (the bare write)": ([[*start, *insert, done]], None),
        "+ audit row": ([[*start, *insert, audit, done]], None),
        "+ the queue alone": ([[*start, *insert, queue, done]], None),
        "+ the queue alone, flush not awaited": ([[*start, *insert, GROUPED, queue, done]], None),
        "+ change log, unqueued": ([[*start, *insert, head, append, done]], None),
        "+ change log (queue, head, entry)": ([[*start, *insert, queue, head, append, done]], None),
        "+ wake-up, NOTIFY with COMMIT": ([[*start, *insert, wake, done]], None),
        "+ wake-up, by the waker": ([[*start, *insert, done]], "wake"),
        "all of it, NOTIFY with COMMIT": ([[*start, *insert], [switch, audit, queue, head, append, wake, done]], None),
        "all of it, each COMMIT flushed": ([[*start, *insert], commit], "wake"),
        "as the app sends it, grouped when others commit": ([[*start, *insert], commit], "durable"),
    }


async def _rate(drivers: list[Any], variants: list[tuple[str, Variant]], n: int,
                waker: Waker) -> tuple[float, float]:
    """(PostgreSQL CPU seconds a transaction, transactions a second) of `n` transactions shared out
    over `drivers`, all at once, driver i sending `variants[i % len(variants)]` (its tenant's), and
    the waker's NOTIFYs counted with them."""
    async def run(i: int, count: int) -> None:
        tenant, (round_trips, then) = variants[i % len(variants)]
        for _ in range(count):
            *before, last = round_trips
            for steps in before:
                await prepared.round_trip(drivers[i], steps, whole=False)
            if then != "durable":
                await prepared.round_trip(drivers[i], last, whole=False)
                if then == "wake":
                    waker.wake([tenant])
                continue
            async with waker.committing(drivers[i], [tenant]) as before_commit:  # as app.access.acting does
                await prepared.round_trip(drivers[i], [*last[:-1], *before_commit, last[-1]], whole=False)

    await asyncio.gather(*(run(i, 50) for i in range(len(drivers))))  # the shapes prepared, the plans cached
    each = max(1, n // len(drivers))
    pg, began = _pg_cpu(), time.perf_counter()
    await asyncio.gather(*(run(i, each) for i in range(len(drivers))))
    await waker.flushed()
    elapsed, done = time.perf_counter() - began, each * len(drivers)
    return _pg_delta(pg) / done, done / elapsed


async def main(n: int, connections: int, tenants: int) -> None:
    async with bench_platform(pool_size=max(10, connections + 2)) as b:
        per_tenant = []
        for k in range(tenants):
            tenant, tenant_token = await b.subtenant(f"cost-{k}")
            per_tenant.append((tenant, _variants(await _captured(b, tenant_token, tenant), tenant)))
        best: dict[str, tuple[float, float]] = {}
        async with contextlib.AsyncExitStack() as stack:
            drivers = []
            for _ in range(connections):
                driver = await libpq_connection(await stack.enter_async_context(b.platform.db.app.connect()))
                await driver.set_autocommit(True)
                drivers.append(driver)
            for _ in range(3):
                for label in per_tenant[0][1]:
                    used, rate = await _rate(drivers, [(tenant, variants[label]) for tenant, variants in per_tenant],
                                             n, b.platform.waker)
                    best[label] = min(best.get(label, (used, rate)), (used, rate))
        bare = best["+ INSERT (the bare write)"][0]
        print(f"createDevice's statements on {connections} connection(s) writing {tenants} tenant(s), "
              f"PostgreSQL CPU a transaction (lowest of 3 x {n}):")
        for label, (used, rate) in best.items():
            print(f"  {label:48s} {used * 1000:.3f} ms  {rate:7.0f} tx/s  {used / bare:.2f}x the bare INSERT")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="What one createDevice costs PostgreSQL.")
    parser.add_argument("n", nargs="?", type=int, default=2000, help="transactions a variant, a round")
    parser.add_argument("--connections", type=int, default=1, help="connections writing at once")
    parser.add_argument("--tenants", type=int, default=1, help="tenants they write, shared out")
    args = parser.parse_args()
    run_as_served(main(args.n, max(1, args.connections), max(1, args.tenants)))
