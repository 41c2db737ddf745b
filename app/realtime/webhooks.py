"""Delivering webhooks from the change log (app.services.changes.webhooks says what is sent).

Each endpoint is served by one process at a time — its registry row is locked (SKIP LOCKED) while
a batch of its changes is sent — one change after another, so deliveries keep log order. Its
position moves past a change only when the endpoint answered 2xx, and is stored in that same
transaction: a crash re-sends at most the batch in flight (at least once; receivers dedupe by
`webhook-id`). A failure stops the batch: the same change is tried again after an exponential
backoff with jitter, until the endpoint has failed for `webhook_retry_hours`; then it is
disabled and an audit record says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx2
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.acting import management_transaction, tenant_transaction
from app.access.principal import Actor
from app.auth.secrets_box import SecretBox
from app.db.transaction import Executor
from app.models.management import tenants, webhooks
from app.services.audit import records
from app.services.changes import log
from app.services.changes import webhooks as service

logger = logging.getLogger("tenantry.webhooks")

BATCH = 100  # changes sent per lease of an endpoint
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 3600.0
SWEEP_SECONDS = 2.0  # endpoints due for a retry, or woken in another process, are looked at this often
SYSTEM = Actor(type="system", id="webhooks")


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failures: doubling, capped, ±50 % jitter."""
    base = min(BACKOFF_BASE_SECONDS * 2.0 ** max(0, attempts - 1), BACKOFF_MAX_SECONDS)
    return base * random.uniform(0.5, 1.5)  # noqa: S311 - spreading retries, not a secret


class Dispatcher:
    def __init__(self, *, engine: AsyncEngine, box: SecretBox, outbound: service.Outbound, timeout: float,
                 retry_hours: float, concurrency: int = 4,
                 counted: Callable[[str, int], None] = lambda tenant, n: None) -> None:
        self.engine = engine
        self.box = box
        self.outbound = outbound
        self.timeout = timeout
        self.retry_hours = retry_hours
        self.counted = counted
        self._slots = asyncio.Semaphore(concurrency)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._client: httpx2.AsyncClient | None = None
        self._busy: set[UUID] = set()
        self._hooked: set[str] = set()  # tenants with an enabled webhook, as of the last sweep

    def wake(self, tenant_id: str) -> None:
        """A tenant's log grew (app.realtime.hub hears it). Only tenants with an enabled webhook wake
        the loop (as of the last sweep): a thousand notifications a second elsewhere cost nothing."""
        if tenant_id in self._hooked:
            self._dirty.add(tenant_id)
            self._wake.set()

    async def run(self) -> None:
        self._client = httpx2.AsyncClient(follow_redirects=False, trust_env=False,
                                          limits=httpx2.Limits(max_connections=50, max_keepalive_connections=20))
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), SWEEP_SECONDS)
                self._wake.clear()
                dirty, self._dirty = self._dirty, set()
                try:
                    due = await self._due(dirty)
                except Exception:
                    logger.exception("webhooks: finding due endpoints failed")
                    continue
                for hook_id in due:
                    if hook_id in self._busy:
                        continue
                    self._busy.add(hook_id)
                    task = asyncio.create_task(self._serve_slot(hook_id))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            await self._client.aclose()

    async def _due(self, dirty: set[str]) -> list[UUID]:
        tx = management_transaction(self.engine)
        try:
            rows = (await tx.execute(select(webhooks.c.id, webhooks.c.tenant_id,
                                            (webhooks.c.next_attempt_at <= func.now()).label("due"))
                                     .where(webhooks.c.enabled))).all()
            self._hooked = {r.tenant_id for r in rows}
            return [r.id for r in rows if r.due]
        finally:
            await tx.finish(commit=False)

    async def _serve_slot(self, hook_id: UUID) -> None:
        try:
            async with self._slots:
                while await self.serve(hook_id):  # a full batch went out: there may be more
                    pass
        except Exception:
            logger.exception("webhooks: serving endpoint %s failed", hook_id)
        finally:
            self._busy.discard(hook_id)

    async def serve(self, hook_id: UUID) -> bool:
        """Send the endpoint's next changes (one lease); whether a full batch went out."""
        tx = management_transaction(self.engine)
        committed = False
        try:
            row = (await tx.execute(
                select(*service.COLUMNS, webhooks.c.secret, webhooks.c.failing_since, tenants.c.status)
                .join(tenants, tenants.c.id == webhooks.c.tenant_id)
                .where(webhooks.c.id == hook_id, webhooks.c.enabled, webhooks.c.next_attempt_at <= func.now())
                .with_for_update(of=webhooks, skip_locked=True))).first()
            if row is None or row.status != "ACTIVE":  # taken elsewhere, not due, or its tenant is suspended
                return False
            hook = service._webhook(row)
            changes = await self._next(hook)
            if not changes:
                return False
            sent = await self._send(tx, hook, self.box.open(row.secret), changes, row.failing_since)
            await tx.finish(commit=True)
            committed = True
            if sent:
                self.counted(hook.tenant_id, sent)
            return sent == len(changes) == BATCH
        finally:
            if not committed:
                await tx.finish(commit=False)

    async def _next(self, hook: service.Webhook) -> list[log.Change]:
        reader = tenant_transaction(self.engine, hook.tenant_id)
        try:
            last = (await log.head(reader)).last
            if last <= hook.position:
                return []
            return await log.read(reader, hook.tenant_id, after=hook.position, limit=BATCH, kinds=hook.kinds,
                                  upto=last)
        finally:
            await reader.finish(commit=False)

    async def _send(self, tx: Executor, hook: service.Webhook, secret: str, changes: list[log.Change],
                    failing_since: Any) -> int:
        """Send in order until one fails; store how far it got. The number sent."""
        assert self._client is not None
        position, attempts, sent = hook.position, hook.attempts, 0
        logged: list[dict[str, Any]] = []
        for change in changes:
            outcome = await service.send(self._client, self.outbound, hook.url, secret, change, self.timeout)
            logged.append(service.delivery_row(hook, change, outcome, attempt=attempts + 1))
            if not outcome.ok:
                await service.record_all(tx, logged)
                await self._failed(tx, hook, position, attempts + 1, failing_since, outcome.error)
                return sent
            position, attempts, sent = change.position, 0, sent + 1
        await service.record_all(tx, logged)
        await tx.execute(update(webhooks).where(webhooks.c.id == hook.id).values(
            position=position, attempts=0, failing_since=None, next_attempt_at=func.now()))
        return sent

    async def _failed(self, tx: Executor, hook: service.Webhook, position: int, attempts: int, failing_since: Any,
                      error: str | None) -> None:
        giving_up = failing_since is not None and (
            await tx.execute(select(func.now() - failing_since > timedelta(hours=self.retry_hours)))).scalar_one()
        if giving_up:
            reason = f"failing for over {self.retry_hours:g} hours; last error: {error}"
            await tx.execute(update(webhooks).where(webhooks.c.id == hook.id).values(
                position=position, attempts=attempts, enabled=False, disabled_reason=reason))
            await records.record(tx, tenant_id=hook.tenant_id, actor=SYSTEM, action="webhook.disabled",
                                 target=str(hook.id), changes=[{"attribute": "enabled", "previous": True,
                                                                "new": False, "reason": reason}])
            logger.warning("webhooks: endpoint %s of %s disabled: %s", hook.id, hook.tenant_id, reason)
            return
        await tx.execute(update(webhooks).where(webhooks.c.id == hook.id).values(
            position=position, attempts=attempts, failing_since=func.coalesce(webhooks.c.failing_since, func.now()),
            next_attempt_at=func.now() + text(f"interval '{backoff(attempts):.3f} seconds'")))
