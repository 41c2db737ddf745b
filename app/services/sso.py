"""OpenID Connect single sign-on, per tenant, with Authlib (client) and joserfc (id_token).

A tenant's admins configure their identity provider (issuer, client id, client secret kept
encrypted, claim → role mapping); subtenants may inherit it. Login: redirect to the
provider with a signed `state` (tenant, nonce, where to return), then the callback
exchanges the code (Authlib), verifies the id_token against the provider's JWKS (joserfc:
signature, iss, aud, exp, nonce), maps the claim to a role, keeps the membership in step,
and issues Tenantry tokens.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlparse

from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.access.principal import Routed
from app.auth.roles import BUILTIN_ROLES, TENANT_ADMIN
from app.auth.secrets_box import SecretBox
from app.db.transaction import Executor
from app.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from app.models.management import identity_providers, memberships
from app.services import audit
from app.services.members import check_delegation
from app.services.users import UserRecord, create_user, normalise_email, user_by_email
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


async def configure(db: Executor, tenant_db: Executor, routed: Routed, *, box: SecretBox, issuer: str,
                    client_id: str, client_secret: str, role_claim: str, role_mapping: dict[str, str],
                    default_role: str | None, inherit: bool, request_id: str | None = None) -> Provider:
    routed.require(TENANT_ADMIN)
    if routed.via_ancestor is not None:
        raise Forbidden("only this tenant's own admins configure its sign-in")
    url = urlparse(issuer)
    if url.scheme not in ("https", "http") or not url.netloc:
        raise InvalidInput("issuer must be an http(s) URL", field="issuer")
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
                    next_url: str | None, secret_key: str) -> str:
    meta = await discovery.metadata(provider.issuer)
    nonce = secrets.token_urlsafe(16)
    state = jwt.encode({"alg": "HS256"}, {"tid": tenant_id, "nonce": nonce, "ru": redirect_uri, "next": next_url,
                                          "exp": int(time.time()) + STATE_TTL}, _state_key(secret_key))
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


async def sign_in(db: Executor, tenant: TenantRecord, provider: Provider, claims: dict[str, Any],
                  *, request_id: str | None = None) -> UserRecord:
    """The user for these claims, a member of the tenant with the mapped role (kept in step)."""
    if claims.get("email_verified") is False:
        raise Forbidden("the identity provider has not verified this email address")
    email = normalise_email(str(claims.get("email") or ""))
    role = role_for(provider, claims)
    if role not in BUILTIN_ROLES and role != provider.default_role and role not in provider.role_mapping.values():
        raise Forbidden("unknown role")
    user = await user_by_email(db, email) or await create_user(db, email=email, password_hash=None)
    current = (await db.execute(select(memberships.c.role).where(
        memberships.c.tenant_id == tenant.id, memberships.c.user_id == user.id))).scalar_one_or_none()
    if current is None:
        await db.execute(insert(memberships).values(user_id=user.id, tenant_id=tenant.id, role=role))
    elif current != role:
        await db.execute(update(memberships).where(memberships.c.tenant_id == tenant.id,
                                                   memberships.c.user_id == user.id).values(role=role))
    await audit.record(db, tenant_id=tenant.id, actor=audit.Actor.user(user.id), action="login.sso",
                       target=email, changes=[{"attribute": "role", "previous": current, "new": role}],
                       request_id=request_id)
    return user
