"""Who is calling, and as what in the tenant the request is routed to."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from app.auth.roles import permissions_of
from app.errors import Forbidden
from app.services.audit import Actor
from app.tenancy.registry import TenantRecord

OPERATOR_ID = UUID(int=0)


@dataclass(frozen=True)
class Principal:
    user_id: UUID
    default_tenant_id: str | None
    token_id: str

    @classmethod
    def operator(cls) -> Principal:
        """The shell operator (`tenantry tenants …`): acts as an ADMIN of the management tenant."""
        return cls(user_id=OPERATOR_ID, default_tenant_id=None, token_id="cli")

    @property
    def actor(self) -> Actor:
        return Actor("operator", "cli") if self.user_id == OPERATOR_ID else Actor.user(self.user_id)


@dataclass(frozen=True)
class Routed:
    """A principal inside one tenant: the tenant record and the role held there."""

    principal: Principal
    tenant: TenantRecord
    role: str

    @property
    def permissions(self) -> frozenset[str]:
        return permissions_of(self.role)

    def require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise Forbidden(f"the {self.role} role lacks the {permission} permission", permission=permission)

    @property
    def actor(self) -> Actor:
        return self.principal.actor
