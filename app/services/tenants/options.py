"""Tenant options (Cumulocity's): per tenant, category + key → value.

A tenant's admins read and set its options; an option marked inheritable is also read by the
tenant's descendants (the nearest definition wins). Keys under `credentials.` are secrets:
sealed with AES-GCM (the same box as identity-provider client secrets, under its own purpose)
and write-only — reads say that a value is set, never what it is; audit records name the key,
never the value. Server-side code that needs a secret in clear calls `secret_value`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.auth.secrets_box import SecretBox
from app.db.transaction import Executor
from app.errors import InvalidInput
from app.models.management import tenant_options
from app.services.audit import records as audit
from app.tenancy.registry import TenantRecord

SECRET_PREFIX = "credentials."
MAX_VALUE = 64 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class OptionRecord:
    category: str
    key: str
    value: str | None  # None for a secret
    is_set: bool
    inheritable: bool
    defined_in: str  # the tenant that set it (an ancestor's, where inherited)


def option_box(secret_key: str) -> SecretBox:
    return SecretBox(secret_key, b"tenantry-tenant-option")


def is_secret(key: str) -> bool:
    return key.startswith(SECRET_PREFIX)


def _check_name(value: str, field: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidInput(f"{field} must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
                           field=field)
    return value


def _visible(tenant: TenantRecord, category: str | None) -> ColumnElement[bool]:
    """The tenant's own options and the inheritable ones of its ancestors."""
    own_or_inherited = (tenant_options.c.tenant_id == tenant.id) | (
        tenant_options.c.tenant_id.in_(list(tenant.path[:-1])) & tenant_options.c.inheritable)
    return own_or_inherited if category is None else own_or_inherited & (tenant_options.c.category == category)


async def _nearest(db: Executor, tenant: TenantRecord, category: str | None) -> dict[tuple[str, str], Any]:
    rows = (await db.execute(select(tenant_options).where(_visible(tenant, category)))).all()
    depth = {tenant_id: i for i, tenant_id in enumerate(tenant.path)}
    found: dict[tuple[str, str], Any] = {}
    for row in sorted(rows, key=lambda r: depth[r.tenant_id]):  # the nearest definition wins
        found[(row.category, row.key)] = row
    return found


async def list_options(db: Executor, routed: Routed, *, category: str | None = None) -> list[OptionRecord]:
    routed.require(TENANT_ADMIN)
    found = await _nearest(db, routed.tenant, category)
    return [OptionRecord(r.category, r.key, None if is_secret(r.key) else r.value, True, r.inheritable, r.tenant_id)
            for _, r in sorted(found.items())]


async def set_option(db: Executor, routed: Routed, box: SecretBox, *, category: str, key: str, value: str,
                     inheritable: bool, request_id: str | None = None) -> OptionRecord:
    routed.require(TENANT_ADMIN)
    routed.require_own_member("set its options")
    category, key = _check_name(category, "category"), _check_name(key, "key")
    if len(value) > MAX_VALUE:
        raise InvalidInput(f"value must be at most {MAX_VALUE} characters", field="value")
    secret = is_secret(key)
    values = {"value": None if secret else value, "sealed": box.seal(value) if secret else None,
              "inheritable": inheritable}
    stmt = pg_insert(tenant_options).values(tenant_id=routed.tenant.id, category=category, key=key, **values)
    await db.execute(stmt.on_conflict_do_update(
        index_elements=[tenant_options.c.tenant_id, tenant_options.c.category, tenant_options.c.key],
        set_={"value": stmt.excluded.value, "sealed": stmt.excluded.sealed, "inheritable": stmt.excluded.inheritable,
              "updated_at": func.now()}))
    shown = "(secret)" if secret else value  # a secret's value is never written to the audit trail
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="option.set",
                       target=f"{category}.{key}", changes=[{"attribute": f"{category}.{key}", "previous": None,
                                                             "new": shown}], request_id=request_id)
    return OptionRecord(category, key, None if secret else value, True, inheritable, routed.tenant.id)


async def delete_option(db: Executor, routed: Routed, *, category: str, key: str,
                        request_id: str | None = None) -> bool:
    routed.require(TENANT_ADMIN)
    routed.require_own_member("delete its options")
    result = await db.execute(delete(tenant_options).where(
        tenant_options.c.tenant_id == routed.tenant.id, tenant_options.c.category == category,
        tenant_options.c.key == key))
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="option.deleted",
                       target=f"{category}.{key}", request_id=request_id)
    return True


async def secret_value(db: Executor, tenant: TenantRecord, box: SecretBox, *, category: str, key: str) -> str | None:
    """A secret option in clear, for server-side code that needs it (never for a response)."""
    row = (await _nearest(db, tenant, category)).get((category, key))
    sealed = getattr(row, "sealed", None)
    return box.open(bytes(sealed)) if sealed is not None else None
