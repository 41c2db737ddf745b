"""Built-in roles and the permissions they hold.

Every resolver declares the permission it needs (app.graphql.permissions); a role is a
named set of permissions. Custom per-tenant roles extend this table later.
"""

from __future__ import annotations

from typing import Final

TENANT_ADMIN: Final = "tenant:admin"
DEVICES_READ: Final = "devices:read"
DEVICES_WRITE: Final = "devices:write"

ALL_PERMISSIONS: Final = frozenset({TENANT_ADMIN, DEVICES_READ, DEVICES_WRITE})

BUILTIN_ROLES: Final[dict[str, frozenset[str]]] = {
    "ADMIN": ALL_PERMISSIONS,
    "MANAGER": frozenset({DEVICES_READ, DEVICES_WRITE}),
    "OPERATOR": frozenset({DEVICES_READ, DEVICES_WRITE}),
    "READER": frozenset({DEVICES_READ}),
}


def permissions_of(role: str) -> frozenset[str]:
    return BUILTIN_ROLES.get(role, frozenset())
