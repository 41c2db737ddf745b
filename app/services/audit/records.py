"""Append-only audit records of management-plane events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from app.access.principal import Actor as Actor
from app.db.transaction import Executor
from app.models.management import audit_log, tenants
from app.services.pagination import Page, build_page, decode_int_cursor, page_size
from app.services.rows import to_record

SYSTEM = Actor("system", None)


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """[{attribute, previous, new}] for every attribute whose value changed."""
    return [
        {"attribute": key, "previous": before.get(key), "new": value}
        for key, value in after.items()
        if before.get(key) != value
    ]


async def record(
    db: Executor,
    *,
    tenant_id: str,
    actor: Actor,
    action: str,
    target: str | None,
    changes: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
) -> None:
    await db.execute(
        insert(audit_log).values(
            tenant_id=tenant_id,
            actor_type=actor.type,
            actor_id=actor.id,
            action=action,
            target=target,
            changes=changes or [],
            request_id=request_id,
        )
    )


@dataclass(frozen=True)
class AuditRecord:
    id: int
    time: datetime
    tenant_id: str
    actor_type: str
    actor_id: str | None
    action: str
    target: str | None
    changes: list[dict[str, Any]]
    request_id: str | None


@dataclass(frozen=True)
class AuditFilter:
    action: str | None = None  # exact, or a prefix ending in "." (e.g. "tenant.")
    tenant_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_records(db: Executor, *, tenant: Any, filter: AuditFilter | None, first: int | None,
                       after: str | None, cap: int) -> Page[AuditRecord]:
    """Management-plane records of `tenant` and its descendants, newest first. (Every record in
    this log is management-plane; data-plane records live in each tenant's own schema.)"""
    size = page_size(first, cap)
    subtree = select(tenants.c.id).where(tenants.c.path.contains([tenant.id]))
    stmt = select(audit_log).where(audit_log.c.tenant_id.in_(subtree))
    f = filter or AuditFilter()
    if f.action:
        stmt = stmt.where(audit_log.c.action.startswith(f.action) if f.action.endswith(".")
                          else audit_log.c.action == f.action)
    if f.tenant_id:
        stmt = stmt.where(audit_log.c.tenant_id == f.tenant_id)
    if f.since:
        stmt = stmt.where(audit_log.c.time >= f.since)
    if f.until:
        stmt = stmt.where(audit_log.c.time < f.until)
    cursor = decode_int_cursor(after)
    if cursor is not None:
        stmt = stmt.where(audit_log.c.id < cursor)
    rows = (await db.execute(stmt.order_by(audit_log.c.id.desc()).limit(size + 1))).all()
    return build_page([to_record(AuditRecord, r) for r in rows], size, lambda r: r.id)
