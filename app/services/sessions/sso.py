"""OpenID Connect single sign-on, per tenant, with Authlib (client) and joserfc (id_token).

A tenant's admins configure their identity provider (issuer, client id, client secret kept
encrypted, claim → role mapping); subtenants may inherit it. Login: redirect to the
provider with a signed `state` (tenant, nonce, where to return), then the callback
exchanges the code (Authlib), verifies the id_token against the provider's JWKS (joserfc:
signature, iss, aud, exp, nonce), maps the claim to a role, keeps the membership in step,
and issues Tenantry tokens.

Who is signed in is decided by the provider's (issuer, subject) through a stored link, never
by its `email` claim: a provider — which any tenant admin can run — vouches only for its own
identities. A new identity gets a new account, unless the email belongs to an existing account,
whose owner must link the identity while signed in (`startSingleSignOnLink`). The session
reaches only the provider's tenant; a provider inherited from an ancestor gives parent-level
access (a SUBTREE membership on the ancestor that configured it), so a descendant's data stays
behind that descendant's parentAccess.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlparse
from uuid import UUID

from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.access.principal import Reach, Routed
from app.auth.roles import BUILTIN_ROLES, TENANT_ADMIN
from app.auth.secrets_box import SecretBox
from app.db.transaction import Executor
from app.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from app.models.management import external_identities, identity_providers, memberships
from app.services.audit import records as audit
from app.services.people.members import add_member, check_delegation
from app.services.people.users import UserRecord, create_user, normalise_email, user_by_email, user_by_id
from app.tenancy.registry import TenantRecord

STATE_TTL = 600
ID_TOKEN_ALGORITHMS = ["RS256", "ES256", "PS256"]


@dataclass(frozen=True)
class Provider:
    tenant_id: str  # where it is configured (the tenant itself or an ancestor that shares it)
    issuer: str
    client_id: str
    client_secret: str
    role_claim: str
    role_mapping: dict[str, str]
    default_role: str | None
    inherit: bool


def secret_box(secret_key: str) -> SecretBox:
    return SecretBox(secret_key, b"tenantry-identity-provider")


def check_issuer(issuer: str, allowed: tuple[str, ...]) -> None:
    """Operators may restrict the providers tenants use (TENANTRY_OIDC_ALLOWED_ISSUERS)."""
    if allowed and issuer.rstrip("/") not in allowed:
        raise Forbidden("this identity provider is not among the issuers the operator allows", field="issuer")


async def configure(db: Executor, tenant_db: Executor, routed: Routed, *, box: SecretBox, issuer: str,
                    client_id: str, client_secret: str, role_claim: str, role_mapping: dict[str, str],
                    default_role: str | None, inherit: bool, allowed_issuers: tuple[str, ...] = (),
                    request_id: str | None = None) -> Provider:
    routed.require(TENANT_ADMIN)
    routed.require_own_member("configure this tenant's sign-in")
    url = urlparse(issuer)
    if url.scheme not in ("https", "http") or not url.netloc:
        raise InvalidInput("issuer must be an http(s) URL", field="issuer")
    check_issuer(issuer, allowed_issuers)
    if not client_id or not client_secret:
        raise InvalidInput("clientId and clientSecret are required", field="clientId")
    if not isinstance(role_mapping, dict) or not all(isinstance(v, str) for v in role_mapping.values()):
        raise InvalidInput("roleMapping must map claim values to role names", field="roleMapping")
    for role in {*role_mapping.values(), *([default_role] if default_role else [])}:
        await check_delegation(tenant_db, routed, role)  # unknown role → INVALID_INPUT; more than yours → FORBIDDEN
    issuer = issuer.rstrip("/")
    values: dict[str, Any] = {"issuer": issuer, "client_id": client_id,
                              "client_secret_encrypted": box.seal(client_secret), "role_claim": role_claim,
                              "role_mapping": role_mapping, "default_role": default_role, "inherit": inherit}
    stmt = pg_insert(identity_providers).values(tenant_id=routed.tenant.id, **values)
    await db.execute(stmt.on_conflict_do_update(index_elements=[identity_providers.c.tenant_id],
                                                set_={**values, "updated_at": func.now()}))
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="sso.configured", target=issuer,
                       changes=[{"attribute": "issuer", "previous": None, "new": issuer}], request_id=request_id)
    return Provider(routed.tenant.id, issuer, client_id, client_secret, role_claim, role_mapping, default_role,
                    inherit)


async def provider_for(db: Executor, tenant: TenantRecord, box: SecretBox) -> Provider:
    """The tenant's own provider, else the nearest ancestor's that is shared with subtenants."""
    rows = {r.tenant_id: r for r in (await db.execute(
        select(identity_providers).where(identity_providers.c.tenant_id.in_(list(tenant.path))))).all()}
    for tenant_id in reversed(tenant.path):
        row = rows.get(tenant_id)
        if row is not None and (tenant_id == tenant.id or row.inherit):
            return Provider(tenant_id, row.issuer, row.client_id, box.open(row.client_secret_encrypted),
                            row.role_claim, dict(row.role_mapping), row.default_role, row.inherit)
    raise NotFound(f"tenant {tenant.id} has no single sign-on")


class Discovery:
    """OpenID Provider metadata and JWKS, fetched once per issuer and process (keys refetched
    when an id_token names a key id the cache does not know, i.e. after a rotation)."""

    def __init__(self) -> None:
        self._metadata: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, KeySet] = {}

    async def metadata(self, issuer: str) -> dict[str, Any]:
        if issuer not in self._metadata:
            async with AsyncOAuth2Client() as client:
                response = await client.request("GET", f"{issuer}/.well-known/openid-configuration",
                                                withhold_token=True)
                response.raise_for_status()
                data: dict[str, Any] = response.json()
            if data.get("issuer", "").rstrip("/") != issuer:
                raise Unauthenticated("the identity provider's metadata names another issuer")
            self._metadata[issuer] = data
        return self._metadata[issuer]

    async def keys(self, issuer: str, *, refresh: bool = False) -> KeySet:
        if refresh or issuer not in self._keys:
            meta = await self.metadata(issuer)
            async with AsyncOAuth2Client() as client:
                response = await client.request("GET", meta["jwks_uri"], withhold_token=True)
                response.raise_for_status()
                self._keys[issuer] = KeySet.import_key_set(response.json())
        return self._keys[issuer]


def _state_key(secret_key: str) -> OctKey:
    return OctKey.import_key(("oidc-state:" + secret_key).encode())


async def login_url(discovery: Discovery, provider: Provider, *, tenant_id: str, redirect_uri: str,
                    next_url: str | None, secret_key: str, link_user: UUID | None = None) -> str:
    meta = await discovery.metadata(provider.issuer)
    nonce = secrets.token_urlsafe(16)
    claims = {"tid": tenant_id, "nonce": nonce, "ru": redirect_uri, "next": next_url,
              "exp": int(time.time()) + STATE_TTL}
    if link_user is not None:  # signed (like all of the state), so it cannot be swapped in the browser
        claims["lnk"] = str(link_user)
    state = jwt.encode({"alg": "HS256"}, claims, _state_key(secret_key))
    query = urlencode({"response_type": "code", "client_id": provider.client_id, "redirect_uri": redirect_uri,
                       "scope": "openid email profile", "state": state, "nonce": nonce})
    return f"{meta['authorization_endpoint']}?{query}"


def read_state(state: str, secret_key: str) -> dict[str, Any]:
    try:
        token = jwt.decode(state, _state_key(secret_key), algorithms=["HS256"])
        jwt.JWTClaimsRegistry(exp={"essential": True}, tid={"essential": True}).validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise Unauthenticated("invalid or expired sign-in state; start again") from exc
    return dict(token.claims)


async def exchange(discovery: Discovery, provider: Provider, *, code: str, redirect_uri: str,
                   nonce: str) -> dict[str, Any]:
    """Code → tokens (Authlib) → verified id_token claims (joserfc)."""
    meta = await discovery.metadata(provider.issuer)
    async with AsyncOAuth2Client(provider.client_id, provider.client_secret,
                                 token_endpoint_auth_method="client_secret_post") as client:
        token = await client.fetch_token(meta["token_endpoint"], grant_type="authorization_code", code=code,
                                         redirect_uri=redirect_uri)
    id_token = token.get("id_token")
    if not id_token:
        raise Unauthenticated("the identity provider returned no id_token")
    try:
        try:
            decoded = jwt.decode(id_token, await discovery.keys(provider.issuer), algorithms=ID_TOKEN_ALGORITHMS)
        except JoseError:  # perhaps a rotated key: fetch the JWKS again, once
            decoded = jwt.decode(id_token, await discovery.keys(provider.issuer, refresh=True),
                                 algorithms=ID_TOKEN_ALGORITHMS)
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": provider.issuer}, aud={"essential": True, "value": provider.client_id},
            exp={"essential": True}, sub={"essential": True}, nonce={"essential": True, "value": nonce},
        ).validate(decoded.claims)
    except (JoseError, ValueError) as exc:
        raise Unauthenticated("the identity provider's id_token did not verify") from exc
    return dict(decoded.claims)


def role_for(provider: Provider, claims: dict[str, Any]) -> str:
    values = claims.get(provider.role_claim)
    values = values if isinstance(values, list) else [values] if values is not None else []
    for value in values:
        if str(value) in provider.role_mapping:
            return provider.role_mapping[str(value)]
    if provider.default_role:
        return provider.default_role
    raise Forbidden("your identity provider grants you no role in this tenant")


LINK_TTL = 600


def _link_key(secret_key: str) -> OctKey:
    return OctKey.import_key(("oidc-link:" + secret_key).encode())


def link_ticket(user_id: UUID, tenant_id: str, secret_key: str) -> tuple[str, int]:
    """A short-lived ticket with which the signed-in user starts linking an identity of the
    tenant's provider to their account (a browser navigation carries no Authorization header)."""
    expires = int(time.time()) + LINK_TTL
    ticket = jwt.encode({"alg": "HS256"}, {"uid": str(user_id), "tid": tenant_id, "exp": expires},
                        _link_key(secret_key))
    return ticket, expires


def read_link_ticket(ticket: str, tenant_id: str, secret_key: str) -> UUID:
    try:
        token = jwt.decode(ticket, _link_key(secret_key), algorithms=["HS256"])
        jwt.JWTClaimsRegistry(exp={"essential": True}, uid={"essential": True},
                              tid={"essential": True, "value": tenant_id}).validate(token.claims)
        return UUID(str(token.claims["uid"]))
    except (JoseError, ValueError) as exc:
        raise Unauthenticated("invalid or expired link ticket; start again") from exc


async def _linked_user(db: Executor, issuer: str, subject: str) -> UUID | None:
    return (await db.execute(select(external_identities.c.user_id).where(
        external_identities.c.issuer == issuer, external_identities.c.subject == subject))).scalar_one_or_none()


async def _account_for(db: Executor, provider: Provider, claims: dict[str, Any], link_user: UUID | None,
                       tenant_id: str, request_id: str | None) -> UserRecord:
    """The account this identity signs in: its link, the signed-in user who asked to link it,
    or a new account — never an existing one found by email."""
    subject = str(claims.get("sub") or "")
    if not subject:
        raise Unauthenticated("the identity provider named no subject")
    linked = await _linked_user(db, provider.issuer, subject)
    if link_user is not None:
        if linked is not None and linked != link_user:
            raise Conflict("this identity is already linked to another account")
        user = await user_by_id(db, link_user)
        if user is None:
            raise Unauthenticated("the account to link no longer exists")
        if linked is None:
            await db.execute(insert(external_identities).values(issuer=provider.issuer, subject=subject,
                                                                user_id=user.id))
            await audit.record(db, tenant_id=tenant_id, actor=audit.Actor.user(user.id), action="sso.linked",
                               target=provider.issuer, request_id=request_id)
        return user
    if linked is not None:
        user = await user_by_id(db, linked)
        if user is None:  # pragma: no cover - links cascade with users
            raise Unauthenticated("the linked account no longer exists")
        return user
    if claims.get("email_verified") is False:
        raise Forbidden("the identity provider has not verified this email address")
    email = normalise_email(str(claims.get("email") or ""))
    if not email or "@" not in email:
        raise Forbidden("the identity provider named no email address for a new account")
    if await user_by_email(db, email) is not None:
        raise Conflict("an account with this email already exists: sign in to it and link this identity "
                       "(startSingleSignOnLink)")
    user = await create_user(db, email=email, password_hash=None)
    await db.execute(insert(external_identities).values(issuer=provider.issuer, subject=subject, user_id=user.id))
    return user


async def sign_in(db: Executor, tenant: TenantRecord, provider: Provider, claims: dict[str, Any],
                  *, link_user: UUID | None = None, allowed_issuers: tuple[str, ...] = (),
                  request_id: str | None = None) -> tuple[UserRecord, Reach]:
    """The account for these claims, a member with the mapped role (kept in step), and the
    session's reach: the provider's own tenant, or — inherited — parent-level in its subtree."""
    check_issuer(provider.issuer, allowed_issuers)
    role = role_for(provider, claims)
    if role not in BUILTIN_ROLES and role != provider.default_role and role not in provider.role_mapping.values():
        raise Forbidden("unknown role")
    user = await _account_for(db, provider, claims, link_user, tenant.id, request_id)
    inherited = provider.tenant_id != tenant.id
    holder, scope = (provider.tenant_id, "SUBTREE") if inherited else (tenant.id, "TENANT")
    current = (await db.execute(select(memberships.c.role, memberships.c.scope).where(
        memberships.c.tenant_id == holder, memberships.c.user_id == user.id))).first()
    if current is None:
        await add_member(db, tenant_id=holder, user_id=user.id, role=role, scope=scope)
    elif current.role != role or (inherited and current.scope != scope):
        await db.execute(update(memberships).where(memberships.c.tenant_id == holder,
                                                   memberships.c.user_id == user.id)
                         .values(role=role, scope=scope if inherited else current.scope))
    await audit.record(db, tenant_id=tenant.id, actor=audit.Actor.user(user.id), action="login.sso",
                       target=user.email, changes=[{"attribute": "role", "previous": current.role if current else None,
                                                    "new": role}], request_id=request_id)
    return user, Reach(provider.tenant_id, subtree=inherited)
