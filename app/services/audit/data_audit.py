"""The data-plane audit log inside each tenant's schema (devices, alarms, operations, credentials).

Written under the tenant's role, which may insert and read these rows but not change or
delete them. Parents never see them (they live in the tenant's own schema).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import insert, select

from app.access.principal import Actor
from app.db.transaction import Executor
from app.models.tenant import audit_log
from app.services.audit.records import AuditRecord
from app.services.pagination import Page, build_page, decode_int_cursor, page_size


async def record(db: Executor, *, actor: Actor, action: str, target: str | None,
                 changes: list[dict[str, Any]] | None = None, request_id: str | None = None) -> None:
    """Audit one action in the transaction's tenant. A request's transaction writes the row with its
    COMMIT (app.db.notify.audit_sql: no round trip of its own); any other transaction now."""
    values = {"actor_type": actor.type, "actor_id": actor.id, "action": action, "target": target,
              "changes": changes or [], "request_id": request_id}
    deferred = getattr(db, "audit_at_commit", None)  # a request transaction (app.access.acting)
    if deferred is not None:
        deferred(orjson.dumps(values).decode())
        return
    await db.execute(insert(audit_log).values(**values))


async def list_records(db: Executor, *, tenant_id: str, action: str | None, since: datetime | None,
                       until: datetime | None, first: int | None, after: str | None, cap: int) -> Page[AuditRecord]:
    size = page_size(first, cap)
    stmt = select(audit_log)
    if action:
        exact = audit_log.c.action == action
        stmt = stmt.where(audit_log.c.action.startswith(action) if action.endswith(".") else exact)
    if since:
        stmt = stmt.where(audit_log.c.time >= since)
    if until:
        stmt = stmt.where(audit_log.c.time < until)
    cursor = decode_int_cursor(after)
    if cursor is not None:
        stmt = stmt.where(audit_log.c.id < cursor)
    rows = (await db.execute(stmt.order_by(audit_log.c.id.desc()).limit(size + 1))).all()
    records = [AuditRecord(id=r.id, time=r.time, tenant_id=tenant_id, actor_type=r.actor_type, actor_id=r.actor_id,
                           action=r.action, target=r.target, changes=r.changes, request_id=r.request_id) for r in rows]
    return build_page(records, size, lambda r: r.id)
