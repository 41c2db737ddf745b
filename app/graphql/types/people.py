"""People and access: members, invitations, API tokens and the audit log of the routed tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import Enum
from urllib.parse import urlencode
from uuid import UUID

import strawberry

from app.access.credentials import ApiTokenRecord
from app.db.naming import is_tenant_id
from app.errors import InvalidInput, NotFound
from app.graphql.connections import Connection
from app.graphql.context import Context
from app.graphql.scalars import JSON
from app.graphql.types.sessions import Membership, User
from app.graphql.types.tenants import Tenant
from app.services.audit import data_audit
from app.services.audit import records as audit_service
from app.services.people import api_tokens, invitations, members
from app.services.people.users import UserRecord
from app.services.sessions import sso

Info = strawberry.Info[Context, None]


def _user_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError as exc:
        raise NotFound(f"user {value} not found") from exc


@strawberry.enum
class MembershipScope(Enum):
    TENANT = "TENANT"
    SUBTREE = "SUBTREE"


@strawberry.type
class Invitation:
    id: strawberry.ID
    email: str
    role: str
    status: str = strawberry.field(description="PENDING, EXPIRED, ACCEPTED or REVOKED")
    created_at: datetime
    expires_at: datetime

    @classmethod
    def of(cls, r: invitations.InvitationRecord, now: datetime) -> Invitation:
        return cls(id=strawberry.ID(str(r.id)), email=r.email, role=r.role, status=r.status(now),
                   created_at=r.created_at, expires_at=r.expires_at)


@strawberry.type(description="What an invitation token leads to; shown to anyone holding the token.")
class InvitationPreview:
    tenant_id: strawberry.ID
    tenant_domain: str
    tenant_company: str
    email: str
    role: str
    status: str
    expires_at: datetime


@strawberry.type
class ApiToken:
    id: strawberry.ID
    name: str
    permissions: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = strawberry.field(description="To the minute.")

    @classmethod
    def of(cls, r: ApiTokenRecord) -> ApiToken:
        return cls(id=strawberry.ID(str(r.id)), name=r.name, permissions=list(r.permissions),
                   created_at=r.created_at, expires_at=r.expires_at, last_used_at=r.last_used_at)


@strawberry.type
class SingleSignOnLink:
    login_path: str
    expires_at: datetime


@strawberry.type
class CreatedApiToken:
    token: str = strawberry.field(description="Shown only here; stored hashed.")
    api_token: ApiToken


@strawberry.type
class AuditRecord:
    id: strawberry.ID
    time: datetime
    tenant_id: strawberry.ID
    actor: str = strawberry.field(description="type:id, e.g. user:…, device:…, api_token:…, system")
    actor_type: str
    actor_id: str | None
    action: str
    target: str | None
    changes: JSON = strawberry.field(description="[{attribute, previous, new}]")
    request_id: str | None

    @classmethod
    def of(cls, r: audit_service.AuditRecord) -> AuditRecord:
        return cls(id=strawberry.ID(str(r.id)), time=r.time, tenant_id=strawberry.ID(r.tenant_id),
                   actor=f"{r.actor_type}:{r.actor_id}" if r.actor_id else r.actor_type, actor_type=r.actor_type,
                   actor_id=r.actor_id, action=r.action, target=r.target, changes=JSON(r.changes),
                   request_id=r.request_id)


@strawberry.enum
class AuditPlane(Enum):
    MANAGEMENT = "MANAGEMENT"
    DATA = "DATA"


@strawberry.type(description="The OIDC provider this tenant signs in with (the client secret is never shown).")
class SingleSignOn:
    issuer: str
    client_id: str
    role_claim: str
    role_mapping: JSON
    default_role: str | None
    inherit: bool = strawberry.field(description="Shared with subtenants that have none of their own.")
    configured_in: strawberry.ID = strawberry.field(description="This tenant, or the ancestor it inherits from.")
    login_path: str = strawberry.field(description="GET this path (optionally ?next=<page>) to sign in.")

    @classmethod
    def of(cls, p: sso.Provider, tenant_id: str) -> SingleSignOn:
        return cls(issuer=p.issuer, client_id=p.client_id, role_claim=p.role_claim, role_mapping=JSON(p.role_mapping),
                   default_role=p.default_role, inherit=p.inherit, configured_in=strawberry.ID(p.tenant_id),
                   login_path=f"/auth/oidc/{tenant_id}/login")


@strawberry.input
class SingleSignOnInput:
    issuer: str
    client_id: str
    client_secret: str
    role_claim: str = "roles"
    role_mapping: JSON = strawberry.field(description='Claim value → role, e.g. {"iot-admins": "ADMIN"}')
    default_role: str | None = strawberry.field(default=None, description="When no claim value maps; null: refuse.")
    inherit: bool = False


@strawberry.input
class AuditFilter:
    plane: AuditPlane = strawberry.field(
        default=AuditPlane.MANAGEMENT,
        description="MANAGEMENT: this tenant's and its descendants' records; DATA: this tenant's own data-plane "
                    "records (devices, alarms, operations, credentials), which parents never see.")
    action: str | None = strawberry.field(default=None, description='Exact, or a prefix ending in "."')
    tenant_id: strawberry.ID | None = None
    since: datetime | None = None
    until: datetime | None = None


def _membership(ctx: Context, tenant: Tenant, m: members.MemberRecord) -> Membership:
    return Membership(tenant=tenant, role=m.role, scope=m.scope,
                      user=User.of(UserRecord(m.user_id, m.email, None)))


@strawberry.type
class PeopleQueries:
    @strawberry.field(description="Members of the routed tenant (ADMIN).")
    async def members(self, info: Info, first: int | None = None, after: str | None = None) -> Connection[Membership]:
        ctx = info.context
        routed = await ctx.routed()
        page = await members.list_members(ctx.management_db, routed, first=first, after=after, cap=ctx.cap)
        tenant = Tenant.of(routed.tenant)
        return Connection.of(page, lambda m: _membership(ctx, tenant, m))

    @strawberry.field(description="Pending (and expired, not yet revoked) invitations of the routed tenant.")
    async def invitations(self, info: Info, first: int | None = None,
                          after: str | None = None) -> Connection[Invitation]:
        ctx = info.context
        page = await invitations.list_pending(ctx.management_db, await ctx.routed(), first=first, after=after,
                                              cap=ctx.cap)
        now = ctx.platform.clock()
        return Connection.of(page, lambda r: Invitation.of(r, now))

    @strawberry.field(description="Public: the tenant and role an invitation token leads to; null if unknown.")
    async def invitation(self, info: Info, token: str) -> InvitationPreview | None:
        ctx = info.context
        found = await invitations.preview(ctx.management_db, token)
        if found is None:
            return None
        r = found.invitation
        return InvitationPreview(tenant_id=strawberry.ID(r.tenant_id), tenant_domain=found.tenant_domain,
                                 tenant_company=found.tenant_company, email=r.email, role=r.role,
                                 status=r.status(ctx.platform.clock()), expires_at=r.expires_at)

    @strawberry.field(description="The routed tenant's single sign-on (its own or inherited), or null.")
    async def single_sign_on(self, info: Info) -> SingleSignOn | None:
        ctx = info.context
        routed = await ctx.routed()
        routed.require("tenant:admin")
        try:
            provider = await sso.provider_for(ctx.management_db, routed.tenant,
                                              sso.secret_box(ctx.platform.settings.resolved_secret_key()))
        except NotFound:
            return None
        return SingleSignOn.of(provider, routed.tenant.id)

    @strawberry.field(description="Live API tokens of the routed tenant (ADMIN).")
    async def api_tokens(self, info: Info) -> list[ApiToken]:
        ctx = info.context
        return [ApiToken.of(t) for t in await api_tokens.list_tokens(ctx.management_db, await ctx.routed())]

    @strawberry.field(description="Management-plane audit records of the routed tenant and its descendants (ADMIN).")
    async def audit_log(self, info: Info, first: int | None = None, after: str | None = None,
                        filter: AuditFilter | None = None) -> Connection[AuditRecord]:
        ctx = info.context
        routed = await ctx.routed()
        routed.require("tenant:admin")
        if filter is not None and filter.plane is AuditPlane.DATA:
            page = await data_audit.list_records(await ctx.tenant_db(), tenant_id=routed.tenant.id,
                                                 action=filter.action, since=filter.since, until=filter.until,
                                                 first=first, after=after, cap=ctx.cap)
            return Connection.of(page, AuditRecord.of)
        f = audit_service.AuditFilter(action=filter.action, tenant_id=filter.tenant_id, since=filter.since,
                                      until=filter.until) if filter else None
        page = await audit_service.list_records(ctx.management_db, tenant=routed.tenant, filter=f, first=first,
                                                after=after, cap=ctx.cap)
        return Connection.of(page, AuditRecord.of)


@strawberry.type
class PeopleMutations:
    @strawberry.mutation(description="Change a member's role; the last ADMIN cannot be demoted (CONFLICT).")
    async def set_member_role(self, info: Info, user_id: strawberry.ID, role: str) -> Membership:
        ctx = info.context
        routed = await ctx.routed()
        user = _user_id(user_id)
        record = await members.set_member_role(ctx.management_db, await ctx.tenant_db(), routed, user_id=user,
                                               role=role, request_id=ctx.request_id)
        ctx.platform.registry.forget_membership(user, routed.tenant.id)
        return _membership(ctx, Tenant.of(routed.tenant), record)

    @strawberry.mutation(description="TENANT, or SUBTREE: the same role in every descendant's management plane "
                                     "(and their data where they allow parentAccess FULL).")
    async def set_member_scope(self, info: Info, user_id: strawberry.ID, scope: MembershipScope) -> Membership:
        ctx = info.context
        routed = await ctx.routed()
        user = _user_id(user_id)
        record = await members.set_member_scope(ctx.management_db, routed, user_id=user, scope=scope.value,
                                                request_id=ctx.request_id)
        ctx.platform.registry.forget_membership(user, routed.tenant.id)
        return _membership(ctx, Tenant.of(routed.tenant), record)

    @strawberry.mutation(description="Remove a member; the last ADMIN cannot be removed (CONFLICT).")
    async def remove_member(self, info: Info, user_id: strawberry.ID) -> bool:
        ctx = info.context
        routed = await ctx.routed()
        user = _user_id(user_id)
        await members.remove_member(ctx.management_db, routed, user_id=user, request_id=ctx.request_id)
        ctx.platform.registry.forget_membership(user, routed.tenant.id)
        return True

    @strawberry.mutation(description="Invite someone by email; the token (valid 48 h) is mailed through the outbox.")
    async def invite_member(self, info: Info, email: str, role: str) -> Invitation:
        ctx = info.context
        now = ctx.platform.clock()
        record = await invitations.invite(
            ctx.management_db, await ctx.tenant_db(), await ctx.routed(), email=email, role=role, now=now,
            ttl=timedelta(seconds=ctx.platform.settings.invitation_ttl_seconds), request_id=ctx.request_id)
        return Invitation.of(record, now)

    @strawberry.mutation(description="Accept an invitation as the logged-in user (same email).")
    async def accept_invitation(self, info: Info, token: str) -> Membership:
        ctx = info.context
        principal = await ctx.user()
        record, _ = await invitations.accept(ctx.management_db, principal, token, now=ctx.platform.clock(),
                                             request_id=ctx.request_id)
        ctx.platform.registry.forget_membership(principal.user_id, record.tenant_id)
        tenant = await ctx.platform.registry.tenant(ctx.management_db, record.tenant_id)
        assert tenant is not None
        return Membership(tenant=Tenant.of(tenant), role=record.role, scope="TENANT",
                          user=User.of(UserRecord(principal.user_id, record.email, None)))

    @strawberry.mutation(description="Mail a pending invitation again with a fresh token and 48 h.")
    async def resend_invitation(self, info: Info, id: strawberry.ID) -> Invitation:
        ctx = info.context
        now = ctx.platform.clock()
        record = await invitations.resend(ctx.management_db, await ctx.routed(), id, now=now,
                                          ttl=timedelta(seconds=ctx.platform.settings.invitation_ttl_seconds),
                                          request_id=ctx.request_id)
        return Invitation.of(record, now)

    @strawberry.mutation
    async def revoke_invitation(self, info: Info, id: strawberry.ID) -> bool:
        ctx = info.context
        await invitations.revoke(ctx.management_db, await ctx.routed(), id, now=ctx.platform.clock(),
                                 request_id=ctx.request_id)
        return True

    @strawberry.mutation(description="Sign in to this tenant (and, with inherit, its subtenants) through an OIDC "
                                     "provider. Mapped roles may not exceed your own.")
    async def configure_single_sign_on(self, info: Info, input: SingleSignOnInput) -> SingleSignOn:
        ctx = info.context
        routed = await ctx.routed()
        mapping = input.role_mapping if isinstance(input.role_mapping, dict) else None
        if mapping is None:
            raise InvalidInput("roleMapping must be a JSON object", field="roleMapping")
        provider = await sso.configure(
            ctx.management_db, await ctx.tenant_db(), routed,
            box=sso.secret_box(ctx.platform.settings.resolved_secret_key()), issuer=input.issuer,
            client_id=input.client_id, client_secret=input.client_secret, role_claim=input.role_claim,
            role_mapping=mapping, default_role=input.default_role, inherit=input.inherit,
            allowed_issuers=ctx.platform.settings.oidc_allowed_issuers, request_id=ctx.request_id)
        return SingleSignOn.of(provider, routed.tenant.id)

    @strawberry.mutation(description="Start linking an identity of a tenant's identity provider to your account: "
                                     "open loginPath in the browser within 10 minutes. Single sign-on never signs "
                                     "in to an existing account by email alone.")
    async def start_single_sign_on_link(self, info: Info, tenant_id: strawberry.ID) -> SingleSignOnLink:
        ctx = info.context
        principal = await ctx.user()
        tenant = str(tenant_id)
        if not is_tenant_id(tenant):
            raise InvalidInput("not a tenant id", field="tenantId")
        ticket, expires = sso.link_ticket(principal.user_id, tenant, ctx.platform.settings.resolved_secret_key())
        return SingleSignOnLink(login_path=f"/auth/oidc/{tenant}/login?{urlencode({'link': ticket})}",
                                expires_at=datetime.fromtimestamp(expires, UTC))

    @strawberry.mutation(description="An API token for this tenant with at most your permissions, shown once.")
    async def create_api_token(self, info: Info, name: str, permissions: list[str],
                               expires_at: datetime | None = None) -> CreatedApiToken:
        ctx = info.context
        token, record = await api_tokens.create(ctx.management_db, await ctx.routed(), name=name,
                                                permissions=permissions, expires_at=expires_at,
                                                now=ctx.platform.clock(), request_id=ctx.request_id)
        return CreatedApiToken(token=token, api_token=ApiToken.of(record))

    @strawberry.mutation(description="Revoke an API token; the next request made with it fails.")
    async def revoke_api_token(self, info: Info, id: strawberry.ID) -> bool:
        ctx = info.context
        await api_tokens.revoke(ctx.management_db, await ctx.routed(), id, now=ctx.platform.clock(),
                                request_id=ctx.request_id)
        return True
