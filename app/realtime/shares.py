"""Following standing shares (app.services.changes.shares says what they are).

For each share a batch is applied in ONE transaction on one connection (app.access.acting's
RequestTransaction): the source's log and rows read under the source's role, the copies written
under the target's, the share's position moved in the management plane, then COMMIT. The share's
row is locked (SKIP LOCKED) meanwhile, so one process applies it at a time, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from app.access.acting import PlaneView, RequestTransaction
from app.models.management import shares, tenants
from app.models.tenant import alarms, devices, events, group_devices, measurements, provenance
from app.runtime import announcements
from app.services.changes import log
from app.services.changes.shares import KINDS
from app.services.inventory.devices import group_closure

logger = logging.getLogger("tenantry.shares")

BATCH = 200
SWEEP_SECONDS = 1.0
_ROWS = {"event": events, "alarm": alarms}


class Follower:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._wake = asyncio.Event()
        self._sources: set[str] = set()  # sources of live shares, as of the last sweep

    def wake(self, tenant_id: str) -> None:
        if tenant_id in self._sources:  # other tenants' changes cost nothing here
            self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SWEEP_SECONDS)
            self._wake.clear()
            try:
                async with self.engine.connect() as conn:
                    rows = (await conn.execute(select(shares.c.id, shares.c.source_tenant).where(
                        shares.c.state.in_(["ACTIVE", "PAUSED"])))).all()
                ids = [r.id for r in rows]
                self._sources = {r.source_tenant for r in rows}
            except Exception:
                logger.exception("shares: listing active shares failed")
                continue
            for share_id in ids:
                try:
                    while await self.step(share_id):
                        pass
                except Exception as exc:
                    logger.exception("shares: applying share %s failed", share_id)
                    await self._failed(share_id, exc)

    async def _failed(self, share_id: UUID, exc: Exception) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(shares).where(shares.c.id == share_id).values(error=str(exc)[:500]))

    async def step(self, share_id: UUID) -> bool:
        """Apply the share's next batch; whether a full one went (there may be more)."""
        tx = RequestTransaction(self.engine)
        commit = False
        try:
            commit, full = await self._step(tx, share_id)
            return full
        finally:
            await tx.finish(commit=commit)

    async def _step(self, tx: RequestTransaction, share_id: UUID) -> tuple[bool, bool]:
        management = tx.plane(None)
        source, target = aliased(tenants), aliased(tenants)
        row = (await management.execute(
            select(shares, source.c.status.label("source_status"), target.c.status.label("target_status"))
            .join(source, source.c.id == shares.c.source_tenant).join(target, target.c.id == shares.c.target_tenant)
            .where(shares.c.id == share_id).with_for_update(of=shares, skip_locked=True))).first()
        if row is None or row.state not in ("ACTIVE", "PAUSED"):
            return False, False
        statuses = {row.source_status, row.target_status}
        if "DELETED" in statuses:  # either side gone: the share ends
            await management.execute(update(shares).where(shares.c.id == share_id)
                                     .values(state="REVOKED", error="a tenant of the share was deleted"))
            return True, False
        wanted = "ACTIVE" if statuses == {"ACTIVE"} else "PAUSED"
        if wanted != row.state:
            await management.execute(update(shares).where(shares.c.id == share_id).values(state=wanted))
        if wanted == "PAUSED":
            return True, False
        src, dst = tx.plane(row.source_tenant), tx.plane(row.target_tenant)
        last = (await log.head(src)).last
        if last <= row.position:
            return wanted != row.state, False
        kinds = [KINDS[k] for k in row.selection["include"]]
        found = await log.read(src, row.source_tenant, after=row.position, limit=BATCH, kinds=kinds, upto=last)
        upto = found[-1].position if len(found) == BATCH else last
        chosen = await _selected(src, row.selection, {c.device_id for c in found if c.device_id is not None})
        copied = 0
        for change in found:
            if change.device_id in chosen:
                copied += await _apply(src, dst, row.source_tenant, row.target_tenant, change)
        await management.execute(update(shares).where(shares.c.id == share_id).values(
            position=upto, copied=shares.c.copied + copied, error=None, updated_at=func.now()))
        return True, len(found) == BATCH


async def _selected(src: PlaneView, selection: dict[str, Any], device_ids: set[int]) -> set[int]:
    """Which of these devices the share covers now (a device joining its group is covered from then on)."""
    if not device_ids:
        return set()
    if selection.get("groupId") is None:
        return device_ids & set(selection["deviceIds"])
    closure = group_closure([int(selection["groupId"])])
    rows = await src.execute(select(group_devices.c.device_id).where(
        group_devices.c.group_id.in_(select(closure.c.id)), group_devices.c.device_id.in_(sorted(device_ids))))
    return {r.device_id for r in rows}


async def _device(src: PlaneView, dst: PlaneView, source: str, device_id: int) -> int:
    """The target's copy of a source device, made on first use and mapped in `provenance`."""
    mapped = (await dst.execute(select(provenance.c.target_id).where(
        provenance.c.source_tenant == source, provenance.c.kind == "device", provenance.c.source_id == device_id))
    ).scalar()
    if mapped is not None and (await dst.execute(select(devices.c.id).where(devices.c.id == mapped))).first():
        return int(mapped)
    original = (await src.execute(select(devices.c.name, devices.c.type, devices.c.owner, devices.c.fragments)
                                  .where(devices.c.id == device_id))).one()
    new_id = int((await dst.execute(insert(devices).values(**original._mapping).returning(devices.c.id))).scalar_one())
    mapping = pg_insert(provenance).values(source_tenant=source, kind="device", source_id=device_id,
                                           target_id=new_id, copied_at=func.now())
    # `excluded`, not now(): Citus takes only immutable functions in DO UPDATE SET.
    await dst.execute(mapping.on_conflict_do_update(
        index_elements=["source_tenant", "kind", "source_id"],
        set_={"target_id": mapping.excluded.target_id, "copied_at": mapping.excluded.copied_at}))
    return new_id


async def _apply(src: PlaneView, dst: PlaneView, source: str, target: str, change: log.Change) -> int:
    """One change of the source, applied to the target with its origin; the rows it wrote."""
    assert change.device_id is not None
    device = await _device(src, dst, source, change.device_id)
    if change.kind == "measurement":
        b = change.body
        rows = (await src.execute(select(measurements.c.id, measurements.c.time, measurements.c.type,
                                         measurements.c.series, measurements.c.value, measurements.c.unit).where(
            measurements.c.device_id == change.device_id,
            measurements.c.time.between(datetime.fromisoformat(b["lo"]), datetime.fromisoformat(b["hi"])),
            text("measurements.xmin = CAST(CAST(:xid AS text) AS xid)")), {"xid": b.get("w", b.get("x"))})).all()
        if rows:
            await dst.execute(insert(measurements), [
                {"device_id": device, "time": r.time, "type": r.type, "series": r.series, "value": r.value,
                 "unit": r.unit, "origin_tenant": source, "origin_id": r.id} for r in rows])
            await announcements.announce(dst, target, "measurement", "created", device_id=device, lo=b["lo"],
                                         hi=b["hi"], n=len(rows))
        return len(rows)
    table = _ROWS[change.kind]
    values = {k: v for k, v in change.body.items() if k in table.c and k not in ("id", "device_id")}
    for name in ("time", "created_at", "updated_at", "first_raised_at", "last_raised_at"):
        if isinstance(values.get(name), str):
            values[name] = datetime.fromisoformat(values[name])
    values.update(device_id=device, origin_tenant=source, origin_id=change.body["id"])
    statement = pg_insert(table).values(**values)
    statement = statement.on_conflict_do_update(  # a later change of the same row refreshes the copy
        index_elements=["origin_tenant", "origin_id"], index_where=text("origin_id IS NOT NULL"),
        set_={k: statement.excluded[k] for k in values if k not in ("origin_tenant", "origin_id")})
    new_id = (await dst.execute(statement.returning(table.c.id))).scalar_one()
    # The copy in the target's own log, as the target's rows (its ids): its subscribers and webhooks hear it.
    await announcements.announce(dst, target, change.kind, change.op,
                                 rows=[{**change.body, "id": new_id, "device_id": device}])
    return 1
