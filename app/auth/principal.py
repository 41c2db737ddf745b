"""Who is calling, and as what in the tenant the request is routed to."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from app.auth.roles import DEVICE_PERMISSIONS, permissions_of
from app.errors import Forbidden
from app.services.audit import Actor
from app.services.scope import UNRESTRICTED, Scope
from app.tenancy.registry import TenantRecord

OPERATOR_ID = UUID(int=0)
DEVICE_USER_ID = UUID(int=1)  # placeholder user of device principals (never a real user)


@dataclass(frozen=True)
class Principal:
    """A user (by access token) or a device (by device token, tied to one tenant)."""

    user_id: UUID
    default_tenant_id: str | None
    token_id: str
    device_id: int | None = None
    api_token_id: UUID | None = None  # set when acting through an API token (its creator is user_id)

    @property
    def is_device(self) -> bool:
        return self.device_id is not None

    @classmethod
    def operator(cls) -> Principal:
        """The shell operator (`tenantry tenants …`): acts as an ADMIN of the management tenant."""
        return cls(user_id=OPERATOR_ID, default_tenant_id=None, token_id="cli")

    @property
    def actor(self) -> Actor:
        if self.device_id is not None:
            return Actor("device", str(self.device_id))
        if self.api_token_id is not None:
            return Actor("api_token", str(self.api_token_id))
        return Actor("operator", "cli") if self.user_id == OPERATOR_ID else Actor.user(self.user_id)


@dataclass(frozen=True)
class Routed:
    """A principal inside one tenant: the tenant record and the role held there."""

    principal: Principal
    tenant: TenantRecord
    role: str
    # Built-in roles' permissions are known here; a custom role's come from the tenant schema.
    custom_permissions: frozenset[str] | None = None
    scope: Scope = UNRESTRICTED
    # Set when the caller is here through a SUBTREE membership on this ancestor (parent-level).
    via_ancestor: str | None = None

    @property
    def permissions(self) -> frozenset[str]:
        if self.principal.is_device:
            return DEVICE_PERMISSIONS
        return self.custom_permissions if self.custom_permissions is not None else permissions_of(self.role)

    def require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise Forbidden(f"the {self.role} role lacks the {permission} permission", permission=permission)

    @property
    def actor(self) -> Actor:
        return self.principal.actor
