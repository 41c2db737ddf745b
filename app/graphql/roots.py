"""What each root field of Query asks of the access gate before it reads, declared once.

The resolvers ask it through `Context.root(name)` and the compiled read path plans with it
(app.graphql.engine.compiled), so the two paths cannot ask different questions of the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.auth.roles import DEVICES_READ, OPERATIONS_DEVICE, TENANT_ADMIN

TENANT, MANAGEMENT, ANY = "tenant", "management", "any"


@dataclass(frozen=True)
class RootAccess:
    """One of `permissions` (none: a routed caller is enough), and the plane the field reads: a
    tenant's data through the data gate, the management schema, or either (nothing read).
    `routed`: whether the field needs a tenant at all (`me` does not: it is the tenant chooser)."""

    permissions: tuple[str, ...]
    plane: str
    routed: bool = True


ROOTS: dict[str, RootAccess] = {
    "me": RootAccess((), MANAGEMENT, routed=False),
    "device": RootAccess((DEVICES_READ,), TENANT),
    "devices": RootAccess((DEVICES_READ,), TENANT),
    "group": RootAccess((DEVICES_READ,), TENANT),
    "groups": RootAccess((DEVICES_READ,), TENANT),
    "alarms": RootAccess((DEVICES_READ,), TENANT),
    "events": RootAccess((DEVICES_READ,), TENANT),
    "measurements": RootAccess((DEVICES_READ,), TENANT),
    "measurementSeries": RootAccess((DEVICES_READ,), TENANT),
    "operations": RootAccess((DEVICES_READ, OPERATIONS_DEVICE), TENANT),
    "subtenantUsage": RootAccess((TENANT_ADMIN,), MANAGEMENT),
    "usage": RootAccess((), MANAGEMENT),
    "tenant": RootAccess((), ANY),
    "tenants": RootAccess((), MANAGEMENT),
    "tenantById": RootAccess((), ANY),
}
