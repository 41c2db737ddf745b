"""Per-request GraphQL context: who is calling, the routed tenant, and lazily opened transactions.

Nothing is read or opened until a resolver asks: `login` needs no tenant, `me` needs no
tenant transaction. Both transactions are finished by the HTTP endpoint after execution,
so a response is never sent before its writes are committed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field, replace
from uuid import UUID

from strawberry.dataloader import DataLoader

from app.auth.principal import DEVICE_USER_ID, Principal, Routed
from app.auth.roles import BUILTIN_ROLES
from app.db.transaction import Transaction, management_transaction, tenant_transaction, transaction
from app.errors import Forbidden, RateLimited, TenantSuspended, Unauthenticated
from app.graphql.loaders import Loaders, build_loaders
from app.platform import Platform
from app.services import api_tokens, audit, device_tokens
from app.services.roles import role_permissions
from app.services.scope import Scope
from app.services.usage import LimitUsage, limit_usage
from app.tenancy.routing import route


@dataclass
class Context:
    platform: Platform
    request_id: str
    authorization: str | None
    tenant_header: str | None
    client: str | None = None  # the client's address, for login throttling and audit
    _principal: Principal | None = None
    _routed: Routed | None = None
    _management: Transaction | None = None
    _tenant: Transaction | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    device_request: bool = False  # made with a device token (metered apart)
    # Resources created/updated by this request; metered only once its transaction commits.
    usage: Counter[str] = field(default_factory=Counter)
    _loaders: Loaders | None = None
    _limit_usage: DataLoader[str, LimitUsage] | None = None
    retry_after: int | None = None
    rate_limited: RateLimited | None = None

    @property
    def cap(self) -> int:
        return self.platform.settings.page_size_cap

    def _bearer(self) -> str:
        if not self.authorization:
            raise Unauthenticated("authentication required: send 'Authorization: Bearer <token>'")
        scheme, _, token = self.authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        return token.strip()

    def principal(self) -> Principal:
        """The authenticated user; UNAUTHENTICATED without a valid access token."""
        if self._principal is None:
            token = self._bearer()
            if device_tokens.is_device_token(token) or api_tokens.is_api_token(token):
                raise Forbidden("this needs a user's access token, not a device or API token")
            claims = self.platform.access_tokens.verify(token)
            self._principal = Principal(
                user_id=UUID(claims.user_id), default_tenant_id=claims.default_tenant_id, token_id=claims.token_id
            )
        return self._principal

    @property
    def management_db(self) -> Transaction:
        if self._management is None:
            self._management = management_transaction(self.platform.db.app)
        return self._management

    async def routed(self) -> Routed:
        """The tenant this request works in, and who the caller is there (resolved once)."""
        if self._routed is None:
            token = self._bearer()
            async with self._lock:
                if self._routed is None:
                    if device_tokens.is_device_token(token):
                        routed = await self._route_device(token)
                    elif api_tokens.is_api_token(token):
                        routed = await self._route_api_token(token)
                    else:
                        routed = await self._route_user(self.principal())
                    self._routed = routed
                    try:
                        self.platform.rate_limiter.take(routed.tenant)
                    except RateLimited as exc:
                        self.retry_after = int(exc.extensions["retryAfter"])
                        self.rate_limited = exc
        if self.rate_limited is not None:  # every resolver of a refused request is refused
            raise self.rate_limited
        return self._routed

    async def route_to(self, tenant_id: str) -> Routed:
        """The caller as it would be routed into another tenant (for cross-tenant operations such
        as copies): the same membership, parent-level and custom-role rules as a request."""
        return await self._route_user(self.principal(), tenant_id)

    async def _route_user(self, principal: Principal, tenant_id: str | None = None) -> Routed:
        routed = await route(self.platform.registry, self.management_db, principal, tenant_id or self.tenant_header)
        if routed.via_ancestor is not None:
            # Every parent-level access is audited in the tenant reached (committed even if
            # the request then fails, e.g. for want of data access).
            async with transaction(self.platform.db.app) as tx:
                await audit.record(tx, tenant_id=routed.tenant.id, actor=principal.actor, action="parent_access",
                                   target=routed.via_ancestor, request_id=self.request_id)
            if routed.role not in BUILTIN_ROLES:  # custom roles belong to the tenant that defined them
                return replace(routed, custom_permissions=frozenset())
        if routed.role in BUILTIN_ROLES:
            return routed
        # A custom role: its permissions live in the tenant's own schema.
        if tenant_id is None:
            self._tenant = tenant_transaction(self.platform.db.app, routed.tenant.id)
            permissions = await role_permissions(self._tenant, routed.role)
        else:
            lookup = tenant_transaction(self.platform.db.app, routed.tenant.id)
            try:
                permissions = await role_permissions(lookup, routed.role)
            finally:
                await lookup.finish(commit=False)
        return replace(routed, custom_permissions=permissions)

    async def _route_api_token(self, token: str) -> Routed:
        tenant_id = api_tokens.parse(token)
        if tenant_id is None:
            raise Unauthenticated("invalid API token")
        if self.tenant_header and self.tenant_header != tenant_id:
            raise Forbidden("an API token works only in its own tenant")
        record = await self.platform.registry.tenant(self.management_db, tenant_id)
        found = await api_tokens.resolve(self.management_db, token, now=self.platform.clock(),
                                         last_used=self.platform.api_token_use)
        if record is None or record.status == "DELETED" or found is None or found.tenant_id != tenant_id:
            raise Unauthenticated("invalid, expired or revoked API token")
        # A token acts for its creator: it stops when the creator is no longer a member.
        if await self.platform.registry.membership(self.management_db, found.created_by, tenant_id) is None:
            raise Unauthenticated("the API token's creator is no longer a member of this tenant")
        if record.status == "SUSPENDED":
            raise TenantSuspended(f"tenant {tenant_id} is suspended")
        principal = Principal(user_id=found.created_by, default_tenant_id=tenant_id, token_id=str(found.id),
                              api_token_id=found.id)
        return Routed(principal=principal, tenant=record, role="API_TOKEN",
                      custom_permissions=frozenset(found.permissions))

    async def _route_device(self, token: str) -> Routed:
        parsed = device_tokens.parse(token)
        if parsed is None:
            raise Unauthenticated("invalid device token")
        tenant_id, _ = parsed
        if self.tenant_header and self.tenant_header != tenant_id:
            raise Forbidden("a device token works only in its own tenant")
        record = await self.platform.registry.tenant(self.management_db, tenant_id)
        if record is None or record.status == "DELETED":
            raise Unauthenticated("invalid device token")
        if record.status == "SUSPENDED":
            raise TenantSuspended(f"tenant {tenant_id} is suspended")
        self._tenant = tenant_transaction(self.platform.db.app, tenant_id)
        device_id = await device_tokens.resolve(self._tenant, token)
        if device_id is None:
            # The device may have moved to another tenant, taking its credentials along.
            moved_to = await device_tokens.moved_to(self.management_db, token)
            if moved_to is None or (self.tenant_header and self.tenant_header != moved_to):
                raise Unauthenticated("invalid device token")
            await self._tenant.finish(commit=False)
            record = await self.platform.registry.tenant(self.management_db, moved_to)
            if record is None or record.status != "ACTIVE":
                raise Unauthenticated("invalid device token")
            tenant_id = moved_to
            self._tenant = tenant_transaction(self.platform.db.app, tenant_id)
            device_id = await device_tokens.resolve(self._tenant, token)
            if device_id is None:
                raise Unauthenticated("invalid device token")
        self.device_request = True
        principal = Principal(user_id=DEVICE_USER_ID, default_tenant_id=tenant_id, token_id="device",
                              device_id=device_id)
        return Routed(principal=principal, tenant=record, role="DEVICE", scope=Scope(device_id=device_id))

    async def authorize(self, permission: str) -> Routed:
        routed = await self.routed()
        routed.require(permission)
        return routed

    async def tenant_db(self) -> Transaction:
        """The routed tenant's transaction (search_path and role switched on its first statement).

        The one door to a tenant's data: a parent-level user passes it only where the tenant's
        own admins set parentAccess to FULL."""
        routed = await self.routed()
        if routed.via_ancestor is not None and routed.tenant.parent_access != "FULL":
            raise Forbidden(f"tenant {routed.tenant.id} does not grant parent-level access to its data "
                            "(parentAccess is MANAGEMENT_ONLY)")
        if self._tenant is None:
            self._tenant = tenant_transaction(self.platform.db.app, routed.tenant.id)
        return self._tenant

    def count(self, name: str, n: int = 1) -> None:
        self.usage[name] += n

    async def scope(self) -> Scope:
        return (await self.routed()).scope

    @property
    def limit_usage(self) -> DataLoader[str, LimitUsage]:
        """Usage beside a tenant's limits (management plane: no tenant data is read)."""
        if self._limit_usage is None:
            async def load(ids: list[str]) -> list[LimitUsage]:
                found = await limit_usage(self.management_db, ids)
                return [found[i] for i in ids]

            self._limit_usage = DataLoader(load_fn=load)
        return self._limit_usage

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = build_loaders(self.tenant_db, self.scope)
        return self._loaders

    async def authorize_any(self, *permissions: str) -> Routed:
        """Routed, holding at least one of the permissions (FORBIDDEN otherwise)."""
        routed = await self.routed()
        if not routed.permissions.intersection(permissions):
            raise Forbidden(f"this needs one of: {', '.join(permissions)}", permission=permissions[0])
        return routed

    @property
    def wrote_tenant_data(self) -> bool:
        return self._tenant is not None and self._tenant.wrote

    async def finish(self, *, commit: bool) -> None:
        """Commit (or roll back) both transactions; the tenant's first, as it holds the writes."""
        error: BaseException | None = None
        for tx in (self._tenant, self._management):
            if tx is None:
                continue
            try:
                await tx.finish(commit=commit and error is None)
            except BaseException as exc:  # finish the other one anyway, then re-raise
                error = exc
        if error is not None:
            raise error

