"""Identity and session: login, token refresh, logout, and `me` (the tenant chooser)."""

from __future__ import annotations

import strawberry

from app.errors import Unauthenticated
from app.graphql.context import Context
from app.graphql.types.tenants import Tenant
from app.services.people.users import UserRecord, user_by_email, user_by_id
from app.services.sessions import accounts, signup
from app.services.sessions import login as service

Info = strawberry.Info[Context, None]


@strawberry.type
class User:
    id: strawberry.ID
    email: str

    @classmethod
    def of(cls, r: UserRecord) -> User:
        return cls(id=strawberry.ID(str(r.id)), email=r.email)


@strawberry.type
class Membership:
    tenant: Tenant
    role: str
    scope: str
    user: User


@strawberry.type
class Me:
    user: User
    memberships: list[Membership]


@strawberry.type
class AuthPayload:
    access_token: str
    refresh_token: str
    expires_in: int = strawberry.field(description="Seconds until the access token expires.")
    user: User
    tenant: Tenant | None = strawberry.field(
        description="The token's default tenant: the one asked for, else the only membership, else null.")


async def _payload(ctx: Context, session: service.Session) -> AuthPayload:
    tenant = None
    if session.tenant_id is not None:
        record = await ctx.platform.registry.tenant(ctx.management_db, session.tenant_id)
        tenant = Tenant.of(record) if record else None
    return AuthPayload(access_token=session.access_token, refresh_token=session.refresh_token,
                       expires_in=session.expires_in, user=User.of(session.user), tenant=tenant)


@strawberry.type
class AuthQueries:
    @strawberry.field(description="The caller and every tenant it can enter.")
    async def me(self, info: Info) -> Me:
        ctx = info.context
        principal = await ctx.user()
        user = await user_by_id(ctx.management_db, principal.user_id)
        if user is None or user.disabled:
            raise Unauthenticated("the user of this token no longer exists or is disabled")
        rows = await service.memberships_of(ctx.management_db, principal.user_id)
        me = User.of(user)
        return Me(user=me, memberships=[Membership(tenant=Tenant.of(m.tenant), role=m.role, scope=m.scope, user=me)
                                        for m in rows])


@strawberry.type
class AuthMutations:
    @strawberry.mutation
    async def login(self, info: Info, email: str, password: str, tenant_id: strawberry.ID | None = None) -> AuthPayload:
        ctx = info.context
        session = await service.login(ctx.platform, ctx.management_db, email=email, password=password,
                                      tenant_id=tenant_id, address=ctx.client, request_id=ctx.request_id)
        return await _payload(ctx, session)

    @strawberry.mutation(description="Rotate a refresh token; presenting a rotated one revokes its family.")
    async def refresh_token(self, info: Info, refresh_token: str) -> AuthPayload:
        ctx = info.context
        return await _payload(ctx, await service.refresh(ctx.platform, ctx.management_db, refresh_token=refresh_token))

    @strawberry.mutation(description="Revoke the refresh token's family (every token rotated from one login).")
    async def logout(self, info: Info, refresh_token: str) -> bool:
        ended = await service.logout(info.context.management_db, refresh_token=refresh_token)
        info.context.platform.registry.forget_sessions()  # the session's access tokens stop here at once
        return ended

    @strawberry.mutation(description="Change your password (the current one is required); ends your other sessions.")
    async def change_password(self, info: Info, current_password: str, new_password: str) -> bool:
        ctx = info.context
        await accounts.change_password(ctx.platform, ctx.management_db, await ctx.user(), current=current_password,
                                       new=new_password, address=ctx.client, request_id=ctx.request_id)
        return True

    @strawberry.mutation(description="Mail a single-use reset token (valid 1 h) if the email has an account. Always "
                                     "true: the answer says nothing about which emails have accounts.")
    async def request_password_reset(self, info: Info, email: str) -> bool:
        ctx = info.context
        await accounts.request_reset(ctx.platform, ctx.management_db, email=email, now=ctx.platform.clock(),
                                     address=ctx.client, request_id=ctx.request_id)
        return True

    @strawberry.mutation(description="Set a new password with a mailed reset token; ends every session of the user.")
    async def reset_password(self, info: Info, token: str, new_password: str) -> bool:
        ctx = info.context
        await accounts.reset_password(ctx.platform, ctx.management_db, token=token, new=new_password,
                                      now=ctx.platform.clock(), request_id=ctx.request_id)
        return True


@strawberry.type
class SignUpPayload:
    status: str = strawberry.field(description="VERIFICATION_SENT (check the mail) or JOINED (by invitation)")
    email: str
    tenant: Tenant | None


@strawberry.type
class SignUpMutations:
    @strawberry.mutation(description="Sign up for a new STANDARD tenant (verification by mail), or with an "
                                     "invitation token, join the inviting tenant.")
    async def sign_up(self, info: Info, email: str, password: str, company: str,
                      invitation_token: str | None = None) -> SignUpPayload:
        ctx = info.context
        result = await signup.sign_up(ctx.platform, ctx.management_db, email=email, password=password,
                                      company=company, invitation_token=invitation_token, now=ctx.platform.clock())
        return SignUpPayload(status=result.status, email=result.email,
                             tenant=Tenant.of(result.tenant) if result.tenant else None)

    @strawberry.mutation(description="Confirm a sign-up with the mailed token: creates the user and the tenant "
                                     "and logs in.")
    async def verify_sign_up(self, info: Info, token: str) -> AuthPayload:
        ctx = info.context
        result = await signup.verify(ctx.platform, token=token, now=ctx.platform.clock())
        user = await user_by_email(ctx.management_db, result.email)
        if user is None or result.tenant is None:  # pragma: no cover - verify created both
            raise Unauthenticated("sign-up could not be completed")
        session = await service.start_session(ctx.platform, user, result.tenant.id)
        return await _payload(ctx, session)
