"""Device templates a parent shares with chosen descendants (Blynk's templates per
sub-organisation, PDQ's parent-to-child packages).

The template lives with its owner (management schema); each tenant it is shared with holds a
read-only copy in its own schema, written under that tenant's role. Publishing, updating and
withdrawing change the owner's record and every copy in ONE transaction (switching role per
tenant), so copies never disagree with their template. A copy cannot be edited in the tenant
that received it (FORBIDDEN); it changes only when its owner changes the template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.acting import act_as_app, act_as_tenant
from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.db.transaction import Executor
from app.errors import Forbidden, InvalidInput, NotFound
from app.models.management import device_template_shares, device_templates, tenants
from app.models.tenant import shared_templates
from app.services.audit import records as audit


@dataclass(frozen=True)
class TemplateRecord:
    id: UUID
    owner_tenant: str
    name: str
    type: str
    fragments: dict[str, Any]
    series: list[Any]
    version: int
    updated_at: datetime
    read_only: bool
    shared_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class TemplateInput:
    name: str | None = None
    type: str | None = None
    fragments: object = None
    series: object = None


def _check(values: TemplateInput, *, creating: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("name", "type"):
        value = getattr(values, name)
        if value is None:
            if creating:
                raise InvalidInput(f"{name} is required", field=name)
            continue
        if not value.strip() or len(value) > 100:
            raise InvalidInput(f"{name} must be 1-100 characters", field=name)
        out[name] = value.strip()
    if values.fragments is not None:
        if not isinstance(values.fragments, dict):
            raise InvalidInput("fragments must be a JSON object", field="fragments")
        out["fragments"] = values.fragments
    if values.series is not None:
        if not isinstance(values.series, list) or not all(isinstance(x, str | dict) for x in values.series):
            raise InvalidInput("series must be a list of names or {name, unit} objects", field="series")
        out["series"] = values.series
    return out


def _parse_id(template_id: str) -> UUID:
    try:
        return UUID(template_id)
    except ValueError as exc:
        raise NotFound(f"template {template_id} not found") from exc


def _own(routed: Routed) -> None:
    routed.require(TENANT_ADMIN)
    if routed.via_ancestor is not None:
        raise Forbidden("only this tenant's own admins manage its templates")


class _Sync:
    """One transaction on one connection, acting as the application role (management) or as
    one tenant's role (its copy) at a time."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def __aenter__(self) -> _Sync:
        self._cm = self.engine.connect()
        self.conn = await self._cm.__aenter__()
        driver = (await self.conn.get_raw_connection()).driver_connection
        assert driver is not None
        self.driver: Any = driver
        await self.driver.execute(b"BEGIN")
        await self.as_app()
        return self

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            await self.driver.execute(b"ROLLBACK" if exc is not None else b"COMMIT")
        finally:
            await self._cm.__aexit__(kind, exc, tb)

    async def as_app(self) -> None:
        await act_as_app(self.driver)

    async def as_tenant(self, tenant_id: str) -> None:
        await act_as_tenant(self.driver, tenant_id)

    async def execute(self, stmt: Any, params: Any = None) -> Any:
        return await self.conn.execute(stmt, params)


async def _write_copies(sync: _Sync, template: Any, tenant_ids: Sequence[str]) -> None:
    values = {"template_id": template.id, "source_tenant": template.owner_tenant, "name": template.name,
              "type": template.type, "fragments": template.fragments, "series": template.series,
              "version": template.version}
    for tenant_id in tenant_ids:
        await sync.as_tenant(tenant_id)
        # Values from VALUES (`excluded`), not now() in DO UPDATE SET: Citus refuses functions there.
        stmt = pg_insert(shared_templates).values(**values, updated_at=func.now())
        await sync.execute(stmt.on_conflict_do_update(index_elements=[shared_templates.c.template_id],
                                                      set_={c: stmt.excluded[c] for c in (*values, "updated_at")}))
    await sync.as_app()


async def _drop_copies(sync: _Sync, template_id: UUID, tenant_ids: Sequence[str]) -> None:
    for tenant_id in tenant_ids:
        await sync.as_tenant(tenant_id)
        await sync.execute(delete(shared_templates).where(shared_templates.c.template_id == template_id))
    await sync.as_app()


async def _owned(sync: _Sync, routed: Routed, template_id: str) -> Any:
    key = _parse_id(template_id)
    row = (await sync.execute(select(device_templates).where(device_templates.c.id == key).with_for_update())).first()
    if row is None:
        raise NotFound(f"template {template_id} not found")
    if row.owner_tenant != routed.tenant.id:
        shared = (await sync.execute(select(device_template_shares.c.tenant_id).where(
            device_template_shares.c.template_id == key,
            device_template_shares.c.tenant_id == routed.tenant.id))).first()
        if shared is not None:
            raise Forbidden(f"this is a read-only copy shared by tenant {row.owner_tenant}")
        raise NotFound(f"template {template_id} not found")
    return row


async def _shares(sync: _Sync, template_id: UUID) -> list[str]:
    return list((await sync.execute(select(device_template_shares.c.tenant_id).where(
        device_template_shares.c.template_id == template_id))).scalars())


async def create(engine: AsyncEngine, routed: Routed, values: TemplateInput, *,
                 request_id: str | None = None) -> TemplateRecord:
    _own(routed)
    checked = _check(values, creating=True)
    async with _Sync(engine) as sync:
        row = (await sync.execute(insert(device_templates).values(owner_tenant=routed.tenant.id, **checked)
                                  .returning(device_templates))).one()
        await audit.record(sync, tenant_id=routed.tenant.id, actor=routed.actor, action="template.created",
                           target=str(row.id), request_id=request_id)
    return _record(row, read_only=False)


async def change(engine: AsyncEngine, routed: Routed, template_id: str, values: TemplateInput, *,
                 request_id: str | None = None) -> TemplateRecord:
    _own(routed)
    checked = _check(values, creating=False)
    async with _Sync(engine) as sync:
        await _owned(sync, routed, template_id)
        row = (await sync.execute(update(device_templates).where(device_templates.c.id == _parse_id(template_id))
                                  .values(**checked, version=device_templates.c.version + 1, updated_at=func.now())
                                  .returning(device_templates))).one()
        shares = await _shares(sync, row.id)
        await _write_copies(sync, row, shares)  # the copies follow
        await audit.record(sync, tenant_id=routed.tenant.id, actor=routed.actor, action="template.updated",
                           target=str(row.id), changes=[{"attribute": "version", "previous": row.version - 1,
                                                         "new": row.version}], request_id=request_id)
    return _record(row, read_only=False, shared_with=shares)


async def publish(engine: AsyncEngine, routed: Routed, template_id: str, tenant_ids: Sequence[str], *,
                  request_id: str | None = None) -> TemplateRecord:
    _own(routed)
    if not tenant_ids:
        raise InvalidInput("give at least one tenant", field="tenantIds")
    async with _Sync(engine) as sync:
        row = await _owned(sync, routed, template_id)
        found = (await sync.execute(select(tenants.c.id).where(
            tenants.c.id.in_(list(tenant_ids)), tenants.c.path.contains([routed.tenant.id]),
            tenants.c.id != routed.tenant.id, tenants.c.status != "DELETED"))).scalars().all()
        missing = sorted(set(tenant_ids) - set(found))
        if missing:  # only the caller's own descendants, and nothing said about others
            raise NotFound(f"tenant(s) not found: {', '.join(missing)}")
        await sync.execute(pg_insert(device_template_shares).values(
            [{"template_id": row.id, "tenant_id": t} for t in found]).on_conflict_do_nothing())
        await _write_copies(sync, row, found)
        await audit.record(sync, tenant_id=routed.tenant.id, actor=routed.actor, action="template.published",
                           target=str(row.id), changes=[{"attribute": "sharedWith", "previous": None,
                                                         "new": sorted(found)}], request_id=request_id)
        shares = await _shares(sync, row.id)
    return _record(row, read_only=False, shared_with=shares)


async def withdraw(engine: AsyncEngine, routed: Routed, template_id: str, tenant_ids: Sequence[str] | None, *,
                   request_id: str | None = None) -> bool:
    """Withdraw from the given tenants, or (None) withdraw and delete the template everywhere."""
    _own(routed)
    async with _Sync(engine) as sync:
        row = await _owned(sync, routed, template_id)
        shares = await _shares(sync, row.id)
        gone = [t for t in shares if tenant_ids is None or t in tenant_ids]
        await _drop_copies(sync, row.id, gone)
        if tenant_ids is None:
            await sync.execute(delete(device_templates).where(device_templates.c.id == row.id))
        else:
            await sync.execute(delete(device_template_shares).where(device_template_shares.c.template_id == row.id,
                                                                    device_template_shares.c.tenant_id.in_(gone)))
        await audit.record(sync, tenant_id=routed.tenant.id, actor=routed.actor, action="template.withdrawn",
                           target=str(row.id), changes=[{"attribute": "sharedWith", "previous": sorted(gone),
                                                         "new": None}], request_id=request_id)
    return True


async def visible(management: Executor, tenant_db: Executor, tenant_id: str) -> list[TemplateRecord]:
    """The tenant's own templates, then the read-only copies shared with it."""
    own = (await management.execute(select(device_templates).where(device_templates.c.owner_tenant == tenant_id)
                                    .order_by(device_templates.c.name))).all()
    shares: dict[UUID, list[str]] = {}
    if own:
        pairs = (await management.execute(select(
            device_template_shares.c.template_id, device_template_shares.c.tenant_id).where(
            device_template_shares.c.template_id.in_([r.id for r in own])))).all()
        for pair in pairs:
            shares.setdefault(pair.template_id, []).append(pair.tenant_id)
    copies = (await tenant_db.execute(select(shared_templates).order_by(shared_templates.c.name))).all()
    return ([_record(r, read_only=False, shared_with=sorted(shares.get(r.id, []))) for r in own]
            + [TemplateRecord(r.template_id, r.source_tenant, r.name, r.type, r.fragments, r.series, r.version,
                              r.updated_at, read_only=True) for r in copies])


async def for_device(management: Executor, tenant_db: Executor, tenant_id: str, template_id: str) -> TemplateRecord:
    key = _parse_id(template_id)
    for template in await visible(management, tenant_db, tenant_id):
        if template.id == key:
            return template
    raise NotFound(f"template {template_id} not found")


def _record(row: Any, *, read_only: bool, shared_with: Sequence[str] = ()) -> TemplateRecord:
    return TemplateRecord(row.id, row.owner_tenant, row.name, row.type, row.fragments, row.series, row.version,
                          row.updated_at, read_only=read_only, shared_with=tuple(shared_with))
