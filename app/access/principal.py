"""Who is calling (Principal), and as what inside the tenant a request is routed to (Routed).

These are the gate's answers; every rule that turns them into allow/deny is a method here or
in `app.access.gate`, never in a resolver.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from app.access.scope import UNRESTRICTED, Scope
from app.auth.roles import DEVICE_PERMISSIONS, permissions_of
from app.db.naming import MANAGEMENT_TENANT_ID
from app.errors import Forbidden
from app.tenancy.registry import TenantRecord

OPERATOR_ID = UUID(int=0)
DEVICE_USER_ID = UUID(int=1)  # placeholder user of device principals (never a real user)
CLAIMANT = "claimant"  # the token id of a device asking to join, which has none
DEVICES_CLAIM = "devices:claim"  # a claimant's one permission (no role holds it)


@dataclass(frozen=True)
class Actor:
    """Who did something: a user, an API token, a device, or the operator's shell."""

    type: str
    id: str | None

    @classmethod
    def user(cls, user_id: object) -> Actor:
        return cls("user", str(user_id))


@dataclass(frozen=True)
class Reach:
    """The tenants a session may enter at all, whatever its user's memberships say.

    A single sign-on session reaches only the tenant whose provider signed it in (and, for a
    provider inherited from an ancestor, that ancestor's subtree): an identity provider vouches
    for its own tenant, never for the rest of a user's accounts."""

    tenant_id: str
    subtree: bool = False

    def allows(self, tenant: TenantRecord) -> bool:
        return tenant.id == self.tenant_id or (self.subtree and self.tenant_id in tenant.path)

    def encode(self) -> str:
        return self.tenant_id + ("/*" if self.subtree else "")

    @classmethod
    def decode(cls, value: str | None) -> Reach | None:
        if not value:
            return None
        tenant_id, _, rest = value.partition("/")
        return cls(tenant_id, subtree=rest == "*")


@dataclass(frozen=True)
class Principal:
    """A user (by access token) or a device (by device token, tied to one tenant)."""

    user_id: UUID
    default_tenant_id: str | None
    token_id: str
    device_id: int | None = None
    api_token_id: UUID | None = None  # set when acting through an API token (its creator is user_id)
    reach: Reach | None = None  # None: wherever the user's memberships lead
    session_family: UUID | None = None  # the login session (refresh-token family) of the access token

    @property
    def is_device(self) -> bool:
        return self.device_id is not None

    @classmethod
    def operator(cls) -> Principal:
        """The shell operator (`tenantry tenants …`): acts as an ADMIN of the management tenant."""
        return cls(user_id=OPERATOR_ID, default_tenant_id=None, token_id="cli")

    @classmethod
    def claimant(cls, tenant_id: str) -> Principal:
        """A device with no credentials yet, asking to join `tenant_id` (requestDeviceRegistration)."""
        return cls(user_id=DEVICE_USER_ID, default_tenant_id=tenant_id, token_id=CLAIMANT)

    @property
    def actor(self) -> Actor:
        if self.token_id == CLAIMANT:
            return Actor("claimant", None)
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
    # Built-in roles' permissions are known here; a custom role's come from the tenant schema,
    # an API token's are its own intersected with its creator's current ones.
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
    def parent_level(self) -> bool:
        return self.via_ancestor is not None

    @property
    def has_data_access(self) -> bool:
        """Being an ancestor never grants data access by itself: a parent-level caller reaches a
        tenant's data, and changes its people, only where that tenant's own admins set
        parentAccess FULL (the management plane — status, limits, usage, the member list — it
        reaches either way)."""
        return self.via_ancestor is None or self.tenant.parent_access == "FULL"

    def require_data_access(self) -> None:
        if not self.has_data_access:
            raise Forbidden(f"tenant {self.tenant.id} does not grant parent-level access to its data "
                            "(parentAccess is MANAGEMENT_ONLY)")

    def require_operator(self, permission: str) -> None:
        """Things of the whole installation (where tenants are placed, moving them): a member of
        the management tenant (the root: no route into it is parent-level) holding `permission`."""
        if self.tenant.id != MANAGEMENT_TENANT_ID:
            raise Forbidden("only the operator (the management tenant's admins) may see or change this")
        self.require(permission)

    def require_own_member(self, what: str) -> None:
        """Things only a tenant's own members may do (never through parent-level routing)."""
        if self.via_ancestor is not None:
            raise Forbidden(f"only this tenant's own members may {what}")

    @property
    def actor(self) -> Actor:
        return self.principal.actor
