"""Usage metering with no extra write per request.

Requests add to counters in this process (a dict update, no I/O); a background task flushes
them every few seconds as one add-upsert per batch into `tenantry.usage_daily`, and the
server flushes once more on graceful shutdown. Counters of a request whose transaction
rolled back are never added (the endpoint adds them after the commit).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.transaction import transaction
from app.models.management import USAGE_COUNTERS, usage_daily
from app.runtime.periodic import every

log = logging.getLogger("tenantry.metering")


def utc_today() -> date:
    return datetime.now(UTC).date()


FLUSH_BATCH_ROWS = 2000  # x 13 parameters a row: well inside PostgreSQL's 65,535


class Meter:
    def __init__(self, engine: AsyncEngine, *, today: Callable[[], date] = utc_today,
                 flushed: Callable[[str], None] = lambda outcome: None) -> None:
        self._engine = engine
        self._today = today
        self._flushed = flushed  # told "ok" or "failed" after each flush that had something to write
        self._pending: dict[tuple[str, date], Counter[str]] = {}
        self._flush_lock = asyncio.Lock()

    def add(self, tenant_id: str, counts: Mapping[str, int]) -> None:
        """Count for today. Synchronous on purpose: no await, so no lost update between tasks."""
        key = (tenant_id, self._today())
        bucket = self._pending.get(key)
        if bucket is None:
            bucket = self._pending[key] = Counter()
        for name, value in counts.items():
            if value:
                bucket[name] += value

    @property
    def pending(self) -> int:
        return sum(sum(c.values()) for c in self._pending.values())

    async def flush(self) -> int:
        """Write what has been counted; on failure it is kept for the next flush. Returns rows written."""
        async with self._flush_lock:
            taken, self._pending = self._pending, {}
            if not taken:
                return 0
            rows = [{"tenant_id": tenant_id, "day": day, **{c: counts.get(c, 0) for c in USAGE_COUNTERS}}
                    for (tenant_id, day), counts in taken.items()]
            try:
                # In bounded statements (one INSERT of every pending tenant passed PostgreSQL's
                # 65,535 parameters above ~5,000 tenants, and then every later flush failed too),
                # all in one transaction: a failure keeps every count for the next flush, none twice.
                async with transaction(self._engine) as tx:
                    for start in range(0, len(rows), FLUSH_BATCH_ROWS):
                        stmt = pg_insert(usage_daily).values(rows[start:start + FLUSH_BATCH_ROWS])
                        await tx.execute(stmt.on_conflict_do_update(
                            index_elements=[usage_daily.c.tenant_id, usage_daily.c.day],
                            set_={c: usage_daily.c[c] + stmt.excluded[c] for c in USAGE_COUNTERS}))
            except BaseException:
                for (tenant_id, day), counts in taken.items():  # keep them: nothing is lost
                    self._pending.setdefault((tenant_id, day), Counter()).update(counts)
                self._flushed("failed")
                raise
            self._flushed("ok")
            return len(rows)

    async def run(self, interval_seconds: float) -> None:
        await every(interval_seconds, self.flush, log=log, what="usage flush (the counts are kept for the next one)",
                    first_after=interval_seconds)
