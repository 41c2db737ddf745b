"""Per-request GraphQL context: the access gate's answers for this request, plus GraphQL's own
per-request state (dataloaders, resources counted for metering).

Nothing is decided here: who the caller is, where the request is routed, with which rights,
and on which connection all come from `app.access.gate.RequestAccess`. Nothing is read or
opened until a resolver asks (`login` needs no tenant, `me` no tenant plane); the HTTP
endpoint finishes the request's one transaction after execution, so a response is never
sent before its writes are committed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from strawberry.dataloader import DataLoader

from app.access.acting import PlaneView
from app.access.gate import RequestAccess
from app.access.principal import Principal, Routed
from app.access.scope import Scope
from app.errors import Forbidden, InvalidInput
from app.graphql.loaders import Loaders, SharedLoader, build_loaders
from app.graphql.roots import ROOTS
from app.realtime.sessions import Select, Session, Subscription
from app.runtime.platform import Platform
from app.services.data_plane import Plane
from app.services.tenants.placement import Placement, tenant_placements
from app.services.usage.statistics import LimitUsage, limit_usage


@dataclass
class Context:
    platform: Platform
    request_id: str
    access: RequestAccess
    client: str | None = None  # the client's address, for login throttling and audit
    # Resources created/updated by this request; metered only once its transaction commits.
    usage: Counter[str] = field(default_factory=Counter)
    _loaders: Loaders | None = None
    _limit_usage: DataLoader[str, LimitUsage] | None = None
    _placements: DataLoader[str, Placement | None] | None = None
    log_fields: dict[str, str | None] | None = None  # tenant, operation and error code for the access log
    # A subscription's connection (app.http.subscriptions) and the client's id for this operation.
    session: Session | None = None
    operation_key: str = ""
    # Root fields (response names) the compiled read path already answered: execution leaves them out.
    answered_roots: frozenset[str] = frozenset()

    @classmethod
    def of(cls, platform: Platform, *, request_id: str, authorization: str | None, tenant_header: str | None,
           client: str | None = None) -> Context:
        access = platform.gate.request(authorization=authorization, tenant_header=tenant_header,
                                       request_id=request_id)
        return cls(platform=platform, request_id=request_id, access=access, client=client)

    @property
    def cap(self) -> int:
        return self.platform.settings.page_size_cap

    # The gate's answers, under the names resolvers use.
    async def user(self) -> Principal:
        """The authenticated user, with a live account and login session (UNAUTHENTICATED otherwise)."""
        return await self.access.authenticated()

    @property
    def management_db(self) -> PlaneView:
        return self.access.management_db

    async def routed(self) -> Routed:
        return await self.access.routed()

    async def route_to(self, tenant_id: str) -> Routed:
        return await self.access.route_to(tenant_id)

    async def authorize(self, permission: str) -> Routed:
        return await self.access.authorize(permission)

    async def authorize_any(self, *permissions: str) -> Routed:
        """Routed, holding at least one of the permissions (FORBIDDEN otherwise)."""
        routed = await self.routed()
        if not routed.permissions.intersection(permissions):
            raise Forbidden(f"this needs one of: {', '.join(permissions)}", permission=permissions[0])
        return routed

    async def root(self, field: str) -> Routed:
        """Routed, holding what the root field `field` asks (app.graphql.roots, which the compiled
        read path plans with too)."""
        needs = ROOTS[field].permissions
        if not needs:
            return await self.routed()
        return await (self.authorize(needs[0]) if len(needs) == 1 else self.authorize_any(*needs))

    async def tenant_db(self) -> PlaneView:
        return await self.access.tenant_db()

    async def share_source_db(self, source_tenant: str) -> PlaneView:
        return await self.access.share_source_db(source_tenant)

    async def subscribe(self, kind: str, needs: tuple[str, ...], select: Select, *, data: bool = True,
                        log_of: str | None = None, after: str | None = None) -> Subscription:
        """Open a subscription on this request's connection, for a caller the gate routes now and
        who holds one of `needs` (and data access, when `data`): it reads the change log of the
        routed tenant (or of `log_of`), from just after `after` or from now."""
        if self.session is None:
            raise InvalidInput("subscriptions are served over WebSocket (graphql-transport-ws) or "
                               "text/event-stream, not as a plain request")
        routed = await (self.authorize_any(*needs) if needs else self.routed())
        if data:
            routed.require_data_access()
        return await self.session.open(self.operation_key, kind=kind, needs=needs, data=data, select=select,
                                       tenant_id=log_of, after=after)

    async def data_plane(self, permission: str, *alternatives: str) -> Plane:
        """The routed tenant's data plane for a caller holding `permission` (or one of the
        alternatives): what the data-plane use cases in `app.services.data_plane` take."""
        routed = await (self.authorize_any(permission, *alternatives) if alternatives else self.authorize(permission))
        return await self._plane(routed)

    async def _plane(self, routed: Routed) -> Plane:
        return Plane(db=await self.tenant_db(), management=self.management_db, routed=routed,
                     request_id=self.request_id, usage=self.usage,
                     warning_ratio=self.platform.settings.limit_warning_ratio)

    async def claimant_plane(self) -> Plane:
        """The data plane of a device asking to join the tenant of X-Tenant-ID (no credentials):
        the gate routes it as a claimant, who may do nothing but ask."""
        return await self._plane(await self.access.claimant())

    async def scope(self) -> Scope:
        return (await self.routed()).scope

    @property
    def device_request(self) -> bool:
        return self.access.device_request

    @property
    def retry_after(self) -> int | None:
        return self.access.retry_after

    def count(self, name: str, n: int = 1) -> None:
        self.usage[name] += n

    @property
    def limit_usage(self) -> DataLoader[str, LimitUsage]:
        """Usage beside a tenant's limits (management plane: no tenant data is read)."""
        if self._limit_usage is None:
            async def load(ids: list[str]) -> list[LimitUsage]:
                found = await limit_usage(self.management_db, ids)
                return [found[i] for i in ids]

            self._limit_usage = SharedLoader(load_fn=load)
        return self._limit_usage

    @property
    def placements(self) -> DataLoader[str, Placement | None]:
        """Each tenant's node and size, one round trip per Citus node for a page of tenants."""
        if self._placements is None:
            async def load(ids: list[str]) -> list[Placement | None]:
                found = await tenant_placements(self.platform, self.management_db, await self.routed(), ids)
                return [found.get(i) for i in ids]

            self._placements = SharedLoader(load_fn=load)
        return self._placements

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = build_loaders(self.tenant_db, self.scope)
        return self._loaders

    @property
    def wrote_tenant_data(self) -> bool:
        return self.access.tx.wrote

    async def finish(self, *, commit: bool) -> None:
        await self.access.finish(commit=commit)
