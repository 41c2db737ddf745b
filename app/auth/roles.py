"""Built-in roles and the permissions they hold.

Every resolver declares the permission it needs; a role is a named set of permissions.
Built-in roles are fixed here; a tenant adds custom roles (its `roles` table) made of the
same named permissions.
"""

from __future__ import annotations

from typing import Final

TENANT_ADMIN: Final = "tenant:admin"  # management plane, members, roles, retention
DEVICES_READ: Final = "devices:read"  # inventory and all device data
DEVICES_WRITE: Final = "devices:write"  # devices, groups, external ids, device credentials
MEASUREMENTS_WRITE: Final = "measurements:write"
EVENTS_WRITE: Final = "events:write"
ALARMS_WRITE: Final = "alarms:write"
OPERATIONS_WRITE: Final = "operations:write"
# Operator endpoints (/metrics): effective only in the management tenant, where the gate asks for it.
METRICS_READ: Final = "metrics:read"

ALL_PERMISSIONS: Final = frozenset({
    TENANT_ADMIN, DEVICES_READ, DEVICES_WRITE, MEASUREMENTS_WRITE, EVENTS_WRITE, ALARMS_WRITE, OPERATIONS_WRITE,
    METRICS_READ,
})

BUILTIN_ROLES: Final[dict[str, frozenset[str]]] = {
    "ADMIN": ALL_PERMISSIONS,
    "MANAGER": ALL_PERMISSIONS - {TENANT_ADMIN, METRICS_READ},
    "OPERATOR": frozenset({DEVICES_READ, EVENTS_WRITE, ALARMS_WRITE, OPERATIONS_WRITE}),
    "READER": frozenset({DEVICES_READ}),
}

# What a device token may do, always limited to that one device.
DEVICE_PERMISSIONS: Final = frozenset({MEASUREMENTS_WRITE, EVENTS_WRITE, ALARMS_WRITE, "operations:device"})
OPERATIONS_DEVICE: Final = "operations:device"  # read/update its own operations


def permissions_of(role: str) -> frozenset[str]:
    return BUILTIN_ROLES.get(role, frozenset())
