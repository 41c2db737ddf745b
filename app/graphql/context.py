"""Per-request GraphQL context: who is calling, the routed tenant, and lazily opened transactions.

Nothing is read or opened until a resolver asks: `login` needs no tenant, `me` needs no
tenant transaction. Both transactions are finished by the HTTP endpoint after execution,
so a response is never sent before its writes are committed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from uuid import UUID

from app.auth.principal import Principal, Routed
from app.db.transaction import Transaction, management_transaction, tenant_transaction
from app.errors import AppError, Unauthenticated
from app.platform import Platform
from app.tenancy.routing import route


@dataclass
class Context:
    platform: Platform
    request_id: str
    authorization: str | None
    tenant_header: str | None
    _principal: Principal | None = None
    _routed: Routed | None = None
    _management: Transaction | None = None
    _tenant: Transaction | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def cap(self) -> int:
        return self.platform.settings.page_size_cap

    def principal(self) -> Principal:
        """The authenticated caller; UNAUTHENTICATED without a valid bearer token."""
        if self._principal is None:
            if not self.authorization:
                raise Unauthenticated("authentication required: send 'Authorization: Bearer <token>'")
            scheme, _, token = self.authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
            claims = self.platform.access_tokens.verify(token.strip())
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
        if self._routed is None:
            principal = self.principal()
            async with self._lock:
                if self._routed is None:
                    self._routed = await route(self.platform.registry, self.management_db, principal,
                                               self.tenant_header)
        return self._routed

    async def authorize(self, permission: str) -> Routed:
        routed = await self.routed()
        routed.require(permission)
        return routed

    async def tenant_db(self) -> Transaction:
        """The routed tenant's transaction (search_path and role switched on its first statement)."""
        routed = await self.routed()
        if self._tenant is None:
            self._tenant = tenant_transaction(self.platform.db.app, routed.tenant.id)
        return self._tenant

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


def app_error_of(exc: BaseException | None) -> AppError | None:
    return exc if isinstance(exc, AppError) else None
