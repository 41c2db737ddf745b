"""Operations: commands to devices. PENDING → EXECUTING → SUCCESSFUL | FAILED (FAILED needs a
reason; a PENDING operation may also fail directly, e.g. rejected by the device)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, insert, select, update

from app.access.scope import Scope
from app.db.transaction import Executor
from app.errors import Forbidden, InvalidInput, NotFound
from app.models.tenant import operations
from app.services.data.timeseries import check_text
from app.services.inventory.devices import require_devices, require_id
from app.services.pagination import Page, build_page, decode_int_cursor, page_size
from app.services.rows import to_record

STATUSES = ("PENDING", "EXECUTING", "SUCCESSFUL", "FAILED")
TRANSITIONS = {"PENDING": {"EXECUTING", "FAILED"}, "EXECUTING": {"SUCCESSFUL", "FAILED"},
               "SUCCESSFUL": set[str](), "FAILED": set[str]()}
COLUMNS = (operations.c.id, operations.c.device_id, operations.c.status, operations.c.description,
           operations.c.payload, operations.c.failure_reason, operations.c.created_at, operations.c.updated_at)


@dataclass(frozen=True)
class OperationRecord:
    id: int
    device_id: int
    status: str
    description: str
    payload: dict[str, Any]
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime


async def create_operation(db: Executor, scope: Scope, *, device_id: str, description: str,
                           payload: object) -> OperationRecord:
    key = require_id(device_id, "device")
    if scope.device_id is not None:
        raise Forbidden("a device cannot create operations")
    if payload is not None and not isinstance(payload, dict):
        raise InvalidInput("payload must be a JSON object", field="payload")
    await require_devices(db, scope, [key])
    row = (await db.execute(insert(operations).values(
        device_id=key, description=check_text(description, "description", 2000), payload=payload or {},
    ).returning(*COLUMNS))).one()
    return to_record(OperationRecord, row)


async def update_operation_status(db: Executor, scope: Scope, operation_id: str, status: str,
                                  failure_reason: str | None) -> OperationRecord:
    key = require_id(operation_id, "operation")
    row = (await db.execute(select(operations.c.status).where(
        operations.c.id == key, scope.devices(operations.c.device_id)).with_for_update())).first()
    if row is None:
        raise NotFound(f"operation {operation_id} not found")
    if status not in TRANSITIONS[row.status]:
        raise InvalidInput(f"an operation cannot go from {row.status} to {status}", field="status",
                           allowed=sorted(TRANSITIONS[row.status]))
    if status == "FAILED" and not (failure_reason and failure_reason.strip()):
        raise InvalidInput("a FAILED operation needs a failureReason", field="failureReason")
    if status != "FAILED" and failure_reason is not None:
        raise InvalidInput("failureReason is only for FAILED operations", field="failureReason")
    updated = (await db.execute(update(operations).where(operations.c.id == key).values(
        status=status, failure_reason=failure_reason, updated_at=func.now()).returning(*COLUMNS))).one()
    return to_record(OperationRecord, updated)


async def list_operations(db: Executor, scope: Scope, *, device_id: str | None, status: str | None,
                          first: int | None, after: str | None, cap: int) -> Page[OperationRecord]:
    stmt, size = operation_page(scope, device_id=device_id, status=status, first=first, after=after, cap=cap)
    rows = (await db.execute(stmt)).all()
    return build_page([to_record(OperationRecord, r) for r in rows], size, lambda o: o.id)


def operation_page(scope: Scope, *, device_id: str | None, status: str | None, first: int | None,
                   after: str | None, cap: int) -> tuple[Select[Any], int]:
    """The checked page statement (size + 1 rows by id) and the page size: listed here, or
    compiled into a read's JSON (app.graphql.engine.compiled)."""
    size = page_size(first, cap)
    stmt = select(*COLUMNS).where(scope.devices(operations.c.device_id))
    if device_id is not None:
        stmt = stmt.where(operations.c.device_id == require_id(device_id, "device"))
    if status is not None:
        stmt = stmt.where(operations.c.status == status)
    cursor = decode_int_cursor(after)
    if cursor is not None:
        stmt = stmt.where(operations.c.id > cursor)
    return stmt.order_by(operations.c.id).limit(size + 1), size
