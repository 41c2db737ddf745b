"""What one createDevice costs PostgreSQL, statement by statement.

    python -m bench.write_cost [N]

createDevice sends two round trips: BEGIN, the role switch and the INSERT; then, with COMMIT,
its audit row, the change log's head and entry, and the wake-up of the log's readers
(app.access.acting). This captures exactly the steps the app sends for one createDevice (as
prepared on the connection, app.db.prepared), then runs subsets of them N times each (default
2,000) on one connection of the app's pool and prints the CPU that connection's backend used a
transaction, and the ratio to the bare INSERT in the same run: what the audit row, the log and
its wake-up add to a write, and what the second round trip costs. Interleaved over three rounds
(the lowest of each is printed): the machine is shared.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import psutil

from app.db import prepared
from app.db.transaction import libpq_connection
from bench.common import bench_platform, run_as_served

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


async def main(n: int) -> None:
    async with bench_platform() as b:
        tenant, tenant_token = await b.subtenant("cost")
        trips = await _captured(b, tenant_token, tenant)
        first, commit = trips[-2][0], trips[-1][0]
        begin = [step for step in first if step[0] == "BEGIN"] or [("BEGIN", False)]
        start, insert = [*begin, *(s for s in first if s[0] != "BEGIN" and not s[1])], [s for s in first if s[1]]
        switch, audit, head, append, wake = commit[0], commit[1], commit[2], commit[3], commit[4]
        done: Step = ("COMMIT", False)
        variants: dict[str, list[list[Step]]] = {
            "BEGIN, role switch, COMMIT": [[*start, done]],
            "+ INSERT (the bare write)": [[*start, *insert, done]],
            "+ audit row": [[*start, *insert, audit, done]],
            "+ change log (head, entry)": [[*start, *insert, head, append, done]],
            "+ wake-up (NOTIFY)": [[*start, *insert, wake, done]],
            "all of it, one round trip": [[*start, *insert, switch, audit, head, append, wake, done]],
            "as the app sends it (two)": [[*start, *insert], [switch, audit, head, append, wake, done]],
        }
        best: dict[str, float] = {}
        async with b.platform.db.app.connect() as conn:
            driver = await libpq_connection(conn)
            await driver.set_autocommit(True)
            backend = psutil.Process(driver.info.backend_pid)

            async def once(round_trips: list[list[Step]]) -> None:
                for steps in round_trips:
                    await prepared.round_trip(driver, steps, whole=False)

            for _ in range(3):
                for label, round_trips in variants.items():
                    for _ in range(50):  # the shapes prepared, the plans cached
                        await once(round_trips)
                    before = sum(backend.cpu_times()[:2])
                    for _ in range(n):
                        await once(round_trips)
                    used = (sum(backend.cpu_times()[:2]) - before) / n
                    best[label] = min(best.get(label, used), used)
        bare = best["+ INSERT (the bare write)"]
        print(f"createDevice's statements on one connection, PostgreSQL CPU a transaction (lowest of 3 x {n}):")
        for label, used in best.items():
            print(f"  {label:30s} {used * 1000:.3f} ms  {used / bare:.2f}x the bare INSERT")


if __name__ == "__main__":
    run_as_served(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
