"""GET /auth/oidc/{tenant}/login and GET /auth/oidc/callback: OpenID Connect sign-in.

The callback answers JSON tokens, or — when the login asked for `next` (a page of an
allowed origin, TENANTRY_CORS_ORIGINS) — redirects there with the tokens in the fragment,
which browsers do not send to servers.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlparse
from uuid import UUID

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.access.acting import management_transaction
from app.db.naming import is_tenant_id
from app.errors import AppError, InvalidInput, NotFound, TenantSuspended
from app.http.errors import error_response
from app.runtime.platform import Platform
from app.services.sessions import sso
from app.services.sessions.login import start_session
from app.tenancy.registry import TenantRecord


def _check_tenant(tenant: TenantRecord | None, tenant_id: str) -> None:
    if tenant is None or tenant.status == "DELETED":
        raise NotFound(f"tenant {tenant_id} has no single sign-on")
    if tenant.status == "SUSPENDED":  # no sign-in changes the memberships of a suspended tenant
        raise TenantSuspended(f"tenant {tenant_id} is suspended")


class OidcEndpoints:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.discovery = sso.Discovery()
        self.box = sso.secret_box(platform.settings.resolved_secret_key())

    def _callback_url(self, request: Request) -> str:
        base = self.platform.settings.public_url or str(request.base_url)
        return base.rstrip("/") + "/auth/oidc/callback"

    def _check_next(self, next_url: str | None) -> str | None:
        if next_url is None:
            return None
        url = urlparse(next_url)
        if f"{url.scheme}://{url.netloc}" not in self.platform.settings.cors_origins:
            raise InvalidInput("next must be a page of an allowed origin (TENANTRY_CORS_ORIGINS)", field="next")
        return next_url

    async def login(self, request: Request) -> Response:
        tenant_id = request.path_params["tenant_id"]
        tx = management_transaction(self.platform.db.app)
        try:
            tenant = await self.platform.registry.tenant(tx, tenant_id) if is_tenant_id(tenant_id) else None
            _check_tenant(tenant, tenant_id)
            assert tenant is not None
            provider = await sso.provider_for(tx, tenant, self.box)
            secret_key = self.platform.settings.resolved_secret_key()
            ticket = request.query_params.get("link")
            link_user = sso.read_link_ticket(ticket, tenant.id, secret_key) if ticket else None
            url = await sso.login_url(self.discovery, provider, tenant_id=tenant.id,
                                      redirect_uri=self._callback_url(request),
                                      next_url=self._check_next(request.query_params.get("next")),
                                      secret_key=secret_key, link_user=link_user)
        except AppError as exc:
            return error_response(exc)
        finally:
            await tx.finish(commit=False)
        return RedirectResponse(url, status_code=302)

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        tx = management_transaction(self.platform.db.app)
        committed = False
        try:
            if "error" in params:
                raise InvalidInput(f"the identity provider refused: {params.get('error')}", field="error")
            state = sso.read_state(params.get("state", ""), self.platform.settings.resolved_secret_key())
            tenant = await self.platform.registry.tenant(tx, str(state["tid"]))
            _check_tenant(tenant, str(state["tid"]))
            assert tenant is not None
            provider = await sso.provider_for(tx, tenant, self.box)
            claims = await sso.exchange(self.discovery, provider, code=params.get("code", ""),
                                        redirect_uri=str(state["ru"]), nonce=str(state["nonce"]))
            link_user = UUID(str(state["lnk"])) if state.get("lnk") else None
            user, reach = await sso.sign_in(tx, tenant, provider, claims, link_user=link_user,
                                            allowed_issuers=self.platform.settings.oidc_allowed_issuers,
                                            request_id=request.state.request_id)
            await tx.finish(commit=True)
            committed = True
            self.platform.registry.forget_membership(user.id, tenant.id)
            self.platform.registry.forget_membership(user.id, reach.tenant_id)
            session = await start_session(self.platform, user, tenant.id, reach)
        except AppError as exc:
            return error_response(exc)
        finally:
            if not committed:
                await tx.finish(commit=False)
        tokens = {"accessToken": session.access_token, "refreshToken": session.refresh_token,
                  "expiresIn": session.expires_in, "tenantId": tenant.id,
                  "user": {"id": str(user.id), "email": user.email}}
        if state.get("next"):
            fragment = urlencode({k: v for k, v in tokens.items() if k != "user"})
            return RedirectResponse(f"{state['next']}#{fragment}", status_code=302)
        return Response(orjson.dumps(tokens), media_type="application/json")
