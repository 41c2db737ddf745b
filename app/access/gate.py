"""The access gate: who acts, in which tenant, with which rights, on which connection.

Every entry point — GraphQL's Context, the usage export, the OIDC callback, /metrics, the
CLI — turns its credentials into a `RequestAccess` here and asks it; none re-implements a
rule. The rules, in one place:

- Bearer parsing: user access tokens (JWT), API tokens, device tokens (moved devices followed).
- Tenant selection: X-Tenant-ID, else the token's default tenant.
- Entry: a direct membership, or a SUBTREE membership on an ancestor (parent-level, audited in
  the tenant reached). Unknown, deleted and not-a-member answer alike (existence is not
  disclosed). A session with a reach (single sign-on) enters nothing outside it.
- Rights: built-in role permissions, custom roles from the tenant's own schema (never across
  tenants), an API token's = its own ∩ its creator's current ones (with the creator's group
  scope); a device token: its device only.
- The data gate: parent-level callers reach data and people only with parentAccess FULL.
- Moving data between tenants (copy, migration) needs data access on both sides.
- Suspended tenants: TENANT_SUSPENDED. Rate limits per tenant.
- One pooled connection per request (`RequestTransaction`), with bounded waits.
- A device with no credentials may only ask to join a tenant (`claimant`), with its claim code.
- MQTT (the broker's authentication and topic hooks, app.access.broker): a device logs in with its
  id and device token, and reaches only its own topics; the bridge then acts as that device.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from uuid import UUID

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import ids
from app.access import broker, credentials
from app.access.acting import PlaneView, RequestTransaction
from app.access.admission import InFlight, RateLimiter
from app.access.principal import CLAIMANT, DEVICE_USER_ID, DEVICES_CLAIM, Principal, Reach, Routed
from app.access.scope import Scope
from app.auth.roles import BUILTIN_ROLES, METRICS_READ, permissions_of
from app.auth.tokens import AccessTokens
from app.db.naming import MANAGEMENT_TENANT_ID, is_tenant_id
from app.db.transaction import Executor
from app.db.wakes import Waker
from app.errors import Forbidden, InvalidInput, NotFound, RateLimited, TenantSuspended, Unauthenticated
from app.models.management import audit_log
from app.tenancy.registry import MembershipInfo, Registry, TenantRecord


@dataclass
class AccessGate:
    """The process-wide parts of the gate; `request()` makes one request's access."""

    engine: AsyncEngine
    registry: Registry
    access_tokens: AccessTokens
    rate_limiter: RateLimiter
    in_flight: InFlight
    api_token_use: credentials.LastUsed
    clock: Callable[[], datetime]
    # The request transaction's timeouts (app.access.acting.request_limits).
    limits: str = ""
    # Wakes the change log's readers after a request's COMMIT (app.db.wakes); None: with the COMMIT.
    waker: Waker | None = None
    # Principals of verified tokens (a SPA sends the same token with every request).
    principals: dict[str, tuple[object, Principal]] = field(default_factory=dict)

    async def operator(self, db: Executor, tenant_id: str = MANAGEMENT_TENANT_ID) -> Routed:
        """The shell operator (`tenantry …` commands, who hold the database credentials anyway)
        acting as an ADMIN of a tenant: the management tenant, or one it manages."""
        record = await self.registry.tenant(db, tenant_id) if is_tenant_id(tenant_id) else None
        if record is None or record.status == "DELETED":
            raise NotFound(f"no tenant {tenant_id}" if tenant_id != MANAGEMENT_TENANT_ID
                           else "no management tenant yet: run `tenantry bootstrap` first")
        return Routed(principal=Principal.operator(), tenant=record, role="ADMIN")

    async def recheck(self, *, authorization: str | None, tenant_header: str | None) -> tuple[Routed, int | None]:
        """A long-lived caller (a subscription) checked again by the same rules as a request, with no
        rate-limit charge: its routing now, and when its access token expires (None: API and device
        tokens, which live until revoked). A user's token must also still belong to a login session
        that was not ended (logout, refresh-token reuse)."""
        access = self.request(authorization=authorization, tenant_header=tenant_header)
        try:
            token = credentials.bearer(authorization)
            routed = await access._route(token)
            principal = routed.principal
            if principal.api_token_id is not None or principal.is_device:
                return routed, None
            if principal.session_family is not None and not await credentials.session_alive(
                    access.management_db, principal.session_family):
                raise Unauthenticated("this login session has ended")
            return routed, self.access_tokens.verify(token).expires_at
        finally:
            await access.finish(commit=False)

    def request(self, *, authorization: str | None, tenant_header: str | None,
                request_id: str | None = None) -> RequestAccess:
        return RequestAccess(self, authorization=authorization, tenant_header=tenant_header, request_id=request_id)

    # --- MQTT: the broker's hooks, and the bridge acting for a device the broker let in -----------------

    async def broker_login(self, username: str, password: str, client_id: str | None) -> bool:
        """May this MQTT client connect? Its username and client id are its device's id, and its
        password a live token of that device (app.access.broker says why both names)."""
        device = broker.device_of_username(username, client_id)
        if device is None or not credentials.is_device_token(password):
            return False
        access = self.request(authorization=f"Bearer {password}", tenant_header=device[0])
        try:
            routed = await access._route(password)
        except (Unauthenticated, Forbidden, TenantSuspended):
            return False
        finally:
            await access.finish(commit=False)
        return routed.tenant.id == device[0] and routed.principal.device_id == device[1]

    def broker_device(self, tenant_id: str, device_id: int, request_id: str | None = None) -> RequestAccess:
        """The access of a message the broker let a device publish (on its own topic: the broker
        asked `broker.topic_allowed`): the device as it is now — routed only while its tenant is
        active and it still holds a live token (a message queued before a revocation is refused)."""
        access = RequestAccess(self, authorization=None, tenant_header=tenant_id, request_id=request_id)
        access.broker_device = (tenant_id, device_id)
        return access

    async def device_connected(self, tenant_id: str, device_id: int) -> bool:
        """May a device the broker let in stay connected (still a live token, its tenant active)?
        Asked again when access in its tenant changed; no rate-limit charge."""
        access = self.broker_device(tenant_id, device_id)
        try:
            await access._route_broker_device(tenant_id, device_id)
            return True
        except (Unauthenticated, TenantSuspended):
            return False
        finally:
            await access.finish(commit=False)


class RequestAccess:
    """One request's answers (resolved once, on first use) and its one transaction."""

    def __init__(self, gate: AccessGate, *, authorization: str | None, tenant_header: str | None,
                 request_id: str | None) -> None:
        self.gate = gate
        self.authorization = authorization
        self.tenant_header = tenant_header
        self.request_id = request_id
        self.tx = RequestTransaction(gate.engine, gate.limits, gate.waker)
        self.management_db: PlaneView = self.tx.plane(None)
        # The tenant this request's global ids speak of: bound when it is routed (app.ids).
        self.ids = ids.begin()
        self.device_request = False  # made with a device token (metered apart)
        self.broker_device: tuple[str, int] | None = None  # an MQTT message's device (AccessGate.broker_device)
        self.rate_limited: RateLimited | None = None
        self._principal: Principal | None = None
        self._routed: Routed | None = None
        self._lock = asyncio.Lock()

    # --- who -------------------------------------------------------------------------------------------

    def admit(self, client: str | None) -> str:
        """Admission, before the document is parsed: whose share of the process's in-flight slots
        this request takes (app.access.admission) — the tenant it names (X-Tenant-ID, else an API or
        device token's own tenant, else a user token's default tenant) — or, for a caller with no
        credential (none, or a user token that does not verify), its client address, charged
        against the anonymous rate (RATE_LIMITED). API and device tokens are judged by their form
        here (verifying them costs a round trip); one naming a tenant it cannot enter is refused
        within moments, on the tenant's share, so borrowing it buys nothing."""
        header = self.tenant_header if self.tenant_header and is_tenant_id(self.tenant_header) else None
        token = self.authorization.partition(" ")[2].strip() if self.authorization else ""
        tenant = credentials.api_token_tenant(token) or credentials.device_token_tenant(token)
        if tenant is None and token and not credentials.is_api_token(token) and \
                not credentials.is_device_token(token):
            try:
                tenant = self.principal().default_tenant_id or header or MANAGEMENT_TENANT_ID
            except Unauthenticated:
                tenant = None
        if tenant is None:
            self.gate.rate_limiter.take_anonymous(client or "?")
            return f"client:{client or '?'}"
        return f"tenant:{header or tenant}"

    def principal(self) -> Principal:
        """The authenticated user (an access token); UNAUTHENTICATED without a valid one."""
        if self._principal is None:
            token = credentials.bearer(self.authorization)
            if credentials.is_device_token(token) or credentials.is_api_token(token):
                raise Forbidden("this needs a user's access token, not a device or API token")
            claims = self.gate.access_tokens.verify(token)  # cached while valid, expiry checked each time
            known = self.gate.principals.get(token)
            if known is not None and known[0] is claims:  # the same verified claims: the same principal
                self._principal = known[1]
            else:
                self._principal = Principal(
                    user_id=UUID(claims.user_id), default_tenant_id=claims.default_tenant_id,
                    token_id=claims.token_id, reach=Reach.decode(claims.reach),
                    session_family=UUID(claims.family) if claims.family else None)
                if len(self.gate.principals) >= 10_000:
                    self.gate.principals.clear()
                self.gate.principals[token] = (claims, self._principal)
        return self._principal

    async def authenticated(self) -> Principal:
        """`principal()`, whose account is enabled and whose login session was not ended (logout, a
        password change or reset, refresh-token reuse): an access token dies with its session."""
        principal = self.principal()
        await self._check_session(principal)
        return principal

    async def verified(self) -> None:
        """The caller is someone the gate knows (UNAUTHENTICATED otherwise): a user with a live login
        session, or an API or device token that routes. Any header at all is not enough."""
        token = credentials.bearer(self.authorization)
        if credentials.is_device_token(token) or credentials.is_api_token(token):
            await self.routed()
        else:
            await self.authenticated()

    async def _check_session(self, principal: Principal) -> None:
        registry, db = self.gate.registry, self.management_db
        if await registry.user_disabled(db, principal.user_id):
            raise Unauthenticated("this account is disabled")
        if principal.session_family is not None and not await registry.session_alive(db, principal.session_family):
            raise Unauthenticated("this login session has ended: log in again")

    @property
    def routed_or_none(self) -> Routed | None:
        """The routing, if it was made (for metering and logs after the request)."""
        return self._routed

    @property
    def retry_after(self) -> int | None:
        return int(self.rate_limited.extensions["retryAfter"]) if self.rate_limited is not None else None

    # --- where, as what --------------------------------------------------------------------------------

    async def routed(self) -> Routed:
        """The tenant this request works in, and who the caller is there (resolved once)."""
        if self._routed is None:
            token = credentials.bearer(self.authorization) if self.broker_device is None else ""
            async with self._lock:
                if self._routed is None:
                    routed = await (self._route(token) if self.broker_device is None
                                    else self._route_broker_device(*self.broker_device))
                    self._routed = routed
                    self.ids.tenant = routed.tenant.id
                    try:
                        await self.gate.rate_limiter.take(routed.tenant)
                    except RateLimited as exc:
                        self.rate_limited = exc
        if self.rate_limited is not None:  # every resolver of a refused request is refused
            raise self.rate_limited
        return self._routed

    async def claimant(self) -> Routed:
        """A device with no credentials asking to join the tenant X-Tenant-ID names (app.services.
        connectivity.claims): it may only ask, with its claim code. Admission charged it against the
        anonymous rate; the tenant's own rate applies as to every request."""
        tenant_id = self.tenant_header
        if not tenant_id or not is_tenant_id(tenant_id) or tenant_id == MANAGEMENT_TENANT_ID:
            raise InvalidInput("send X-Tenant-ID: the tenant the device joins", field="X-Tenant-ID")
        async with self._lock:
            if self._routed is None:
                record = await self.gate.registry.tenant(self.management_db, tenant_id)
                if record is None or record.status == "DELETED":
                    raise NotFound(f"no tenant {tenant_id}")
                if record.status == "SUSPENDED":
                    raise TenantSuspended(f"tenant {tenant_id} is suspended")
                self._routed = Routed(principal=Principal.claimant(tenant_id), tenant=record, role="CLAIMANT",
                                      custom_permissions=frozenset({DEVICES_CLAIM}))
                self.ids.tenant = tenant_id
                try:
                    await self.gate.rate_limiter.take(record)
                except RateLimited as exc:
                    self.rate_limited = exc
        if self.rate_limited is not None:
            raise self.rate_limited
        if self._routed.principal.token_id != CLAIMANT:
            raise Forbidden("a device asks to join without credentials")
        return self._routed

    async def authorize(self, permission: str) -> Routed:
        routed = await self.routed()
        routed.require(permission)
        return routed

    async def route_to(self, tenant_id: str) -> Routed:
        """The calling user as it would be routed into another tenant (for cross-tenant work such
        as copies): the same membership, parent-level, reach and custom-role rules as a request."""
        return await self._route_user(self.principal(), tenant_id)

    async def tenant_db(self) -> PlaneView:
        """The routed tenant's plane of the request transaction: the one door to a tenant's data."""
        routed = await self.routed()
        routed.require_data_access()
        return self.tx.plane(routed.tenant.id)

    async def share_source_db(self, source_tenant: str) -> PlaneView:
        """Act as a share's source, on this request's connection, to read where its log stands (the
        one fact a share's target needs from it when both sides have consented): the caller must be
        routed into that share's target, and the service reads nothing else there."""
        await self.routed()
        return self.tx.plane(source_tenant)

    async def data_move(self, source_id: str, target_id: str, *, read: Iterable[str],
                        write: Iterable[str], whole_source: bool = False) -> tuple[Routed, Routed]:
        """May the caller read `source_id`'s data and write `target_id`'s (copyData, migrateDevices)?

        Being an ancestor is never enough: each side needs a direct membership with the
        permissions, or parent-level access where that tenant's parentAccess is FULL. The target
        is written as a whole, so a group-limited role there cannot receive; `whole_source`
        (a migration removes whole histories) asks the same of the source."""
        source = await self.route_to(source_id)
        for permission in read:
            source.require(permission)
        source.require_data_access()
        target = await self.route_to(target_id)
        for permission in write:
            target.require(permission)
        target.require_data_access()
        if not target.scope.unrestricted:
            raise Forbidden("this writes into the whole target tenant: a group-limited role cannot receive it")
        if whole_source and not source.scope.unrestricted:
            raise Forbidden("this takes whole devices from the source: a group-limited role cannot give them")
        return source, target

    async def require_operator(self, permission: str = METRICS_READ) -> Routed:
        """A caller of the management tenant holding `permission` (operator-only endpoints)."""
        self.tenant_header = MANAGEMENT_TENANT_ID
        routed = await self.routed()
        if routed.tenant.id != MANAGEMENT_TENANT_ID:  # pragma: no cover - the header is forced above
            raise Forbidden("operators only")
        routed.require(permission)
        return routed

    def own_transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """The request's connection, lent outside its transaction to a use case that runs one of
        its own (copyData, migrateDevices): see RequestTransaction.own_transaction."""
        return self.tx.own_transaction()

    async def finish(self, *, commit: bool) -> None:
        await self.tx.finish(commit=commit)

    # --- the rules -------------------------------------------------------------------------------------

    async def _route(self, token: str) -> Routed:
        """The routing for a bearer token of any kind (no rate-limit charge: `routed()` adds it)."""
        if credentials.is_device_token(token):
            return await self._route_device(token)
        if credentials.is_api_token(token):
            return await self._route_api_token(token)
        return await self._route_user(self.principal(), self.tenant_header)

    async def _route_user(self, principal: Principal, requested: str | None) -> Routed:
        """The tenant from X-Tenant-ID, else the token's default tenant; membership required."""
        registry, db = self.gate.registry, self.management_db
        tenant_id = requested or principal.default_tenant_id
        if not tenant_id:
            raise InvalidInput("no tenant selected: send the X-Tenant-ID header or log in with a tenantId")
        await self._check_session(principal)
        record = await registry.tenant(db, tenant_id) if is_tenant_id(tenant_id) else None
        member = await registry.membership(db, principal.user_id, tenant_id) if record is not None else None
        via = None
        if member is None and record is not None:
            # A parent-level user: a SUBTREE membership on an ancestor, the nearest one first.
            for ancestor in reversed(record.path[:-1]):
                found = await registry.membership(db, principal.user_id, ancestor)
                if found is not None and found.scope == "SUBTREE":
                    member, via = found, ancestor
                    break
        outside = principal.reach is not None and record is not None and not principal.reach.allows(record)
        # One answer for unknown, deleted, out of reach and not-a-member: existence is not disclosed.
        if record is None or member is None or record.status == "DELETED" or outside:
            raise Forbidden(f"you have no access to tenant {tenant_id}")
        if record.status == "SUSPENDED":
            raise TenantSuspended(f"tenant {tenant_id} is suspended")
        if via is not None:
            self._audit_parent_access(principal, record, via)
            # Custom roles belong to the tenant that defined them: none reach a descendant.
            custom = None if member.role in BUILTIN_ROLES else frozenset[str]()
            return Routed(principal=principal, tenant=record, role=member.role, custom_permissions=custom,
                          via_ancestor=via)
        routed = Routed(principal=principal, tenant=record, role=member.role,
                        scope=Scope(group_ids=member.group_ids))
        if member.role in BUILTIN_ROLES:
            return routed
        return replace(routed, custom_permissions=await self._role_permissions(record.id, member))

    async def _role_permissions(self, tenant_id: str, member: MembershipInfo) -> frozenset[str]:
        if member.role in BUILTIN_ROLES:
            return permissions_of(member.role)
        return await credentials.custom_role_permissions(self.tx.plane(tenant_id), member.role)

    def _audit_parent_access(self, principal: Principal, record: TenantRecord, via: str) -> None:
        """Every parent-level entry is audited in the tenant reached, kept even if the request
        then fails (for want of data access, say)."""
        actor, request_id = principal.actor, self.request_id

        async def write(db: Executor) -> None:
            await db.execute(insert(audit_log).values(
                tenant_id=record.id, actor_type=actor.type, actor_id=actor.id, action="parent_access", target=via,
                changes=[], request_id=request_id))

        self.tx.always(write)

    async def _route_api_token(self, token: str) -> Routed:
        tenant_id = credentials.api_token_tenant(token)
        if tenant_id is None:
            raise Unauthenticated("invalid API token")
        if self.tenant_header and self.tenant_header != tenant_id:
            raise Forbidden("an API token works only in its own tenant")
        registry, db = self.gate.registry, self.management_db
        record = await registry.tenant(db, tenant_id)
        found = await credentials.live_api_token(db, token, now=self.gate.clock(), last_used=self.gate.api_token_use)
        if record is None or record.status == "DELETED" or found is None or found.tenant_id != tenant_id:
            raise Unauthenticated("invalid, expired or revoked API token")
        # A token acts for its creator and is never more than the creator is now: it stops when
        # the creator leaves, and shrinks with the creator's role and group scope.
        creator = await registry.membership(db, found.created_by, tenant_id)
        if creator is None or await registry.user_disabled(db, found.created_by):
            raise Unauthenticated("the API token's creator is no longer a member of this tenant, or is disabled")
        if record.status == "SUSPENDED":
            raise TenantSuspended(f"tenant {tenant_id} is suspended")
        effective = frozenset(found.permissions) & await self._role_permissions(tenant_id, creator)
        principal = Principal(user_id=found.created_by, default_tenant_id=tenant_id, token_id=str(found.id),
                              api_token_id=found.id)
        return Routed(principal=principal, tenant=record, role="API_TOKEN", custom_permissions=effective,
                      scope=Scope(group_ids=creator.group_ids))

    async def _route_broker_device(self, tenant_id: str, device_id: int) -> Routed:
        record = await self.gate.registry.tenant(self.management_db, tenant_id)
        if record is None or record.status == "DELETED" or \
                not await credentials.device_has_live_token(self.tx.plane(tenant_id), device_id):
            raise Unauthenticated("this device has no live credentials any more")
        if record.status == "SUSPENDED":
            raise TenantSuspended(f"tenant {tenant_id} is suspended")
        return self._device_routed(record, device_id)

    def _device_routed(self, record: TenantRecord, device_id: int) -> Routed:
        self.device_request = True
        principal = Principal(user_id=DEVICE_USER_ID, default_tenant_id=record.id, token_id="device",
                              device_id=device_id)
        return Routed(principal=principal, tenant=record, role="DEVICE", scope=Scope(device_id=device_id))

    async def _route_device(self, token: str) -> Routed:
        tenant_id = credentials.device_token_tenant(token)
        if tenant_id is None:
            raise Unauthenticated("invalid device token")
        if self.tenant_header and self.tenant_header != tenant_id:
            raise Forbidden("a device token works only in its own tenant")
        registry = self.gate.registry
        record = await registry.tenant(self.management_db, tenant_id)
        if record is None or record.status == "DELETED":
            raise Unauthenticated("invalid device token")
        if record.status == "SUSPENDED":
            raise TenantSuspended(f"tenant {tenant_id} is suspended")
        device_id = await credentials.device_of_token(self.tx.plane(tenant_id), token)
        if device_id is None:
            # The device may have moved to another tenant, taking its credentials along.
            moved_to = await credentials.device_moved_to(self.management_db, token)
            if moved_to is None or (self.tenant_header and self.tenant_header != moved_to):
                raise Unauthenticated("invalid device token")
            record = await registry.tenant(self.management_db, moved_to)
            if record is None or record.status != "ACTIVE":
                raise Unauthenticated("invalid device token")
            tenant_id = moved_to
            device_id = await credentials.device_of_token(self.tx.plane(tenant_id), token)
            if device_id is None:
                raise Unauthenticated("invalid device token")
        return self._device_routed(record, device_id)
