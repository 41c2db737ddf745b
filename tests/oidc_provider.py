"""A small but real OpenID provider for the SSO tests: served over HTTP on 127.0.0.1 by
uvicorn, with discovery, JWKS, an authorization endpoint that signs the configured user in
at once, and a token endpoint issuing RS256 id_tokens (joserfc)."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route


@dataclass
class FakeProvider:
    client_id: str = "tenantry"
    client_secret: str = "s3cret-client"
    user: dict[str, Any] = field(default_factory=dict)  # claims of whoever signs in next
    tamper_nonce: bool = False
    rogue_key: bool = False
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"}))
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    issuer: str = ""
    server: uvicorn.Server | None = None
    task: asyncio.Task[None] | None = None

    def app(self) -> Starlette:
        async def metadata(request: Request) -> Response:
            return JSONResponse({"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                                 "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                                 "id_token_signing_alg_values_supported": ["RS256"]})

        async def jwks(request: Request) -> Response:
            return JSONResponse({"keys": [self.key.as_dict(private=False)]})

        async def authorize(request: Request) -> Response:
            q = request.query_params
            if q.get("client_id") != self.client_id or q.get("response_type") != "code":
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            code = secrets.token_urlsafe(16)
            self.codes[code] = {"nonce": q["nonce"], "redirect_uri": q["redirect_uri"], "user": dict(self.user)}
            return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}")

        async def token(request: Request) -> Response:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            grant = self.codes.pop(str(form.get("code")), None)
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            now = int(time.time())
            claims = {"iss": self.issuer, "aud": self.client_id, "sub": grant["user"]["email"], "iat": now,
                      "exp": now + 300, "nonce": "not-yours" if self.tamper_nonce else grant["nonce"],
                      **grant["user"]}
            key = RSAKey.generate_key(2048, parameters={"kid": "k1"}) if self.rogue_key else self.key
            id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
            return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                                 "expires_in": 300, "id_token": id_token})

        return Starlette(routes=[Route("/.well-known/openid-configuration", metadata), Route("/jwks", jwks),
                                 Route("/authorize", authorize), Route("/token", token, methods=["POST"])])

    async def start(self) -> None:
        self.server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="off"))
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(500):  # bounded: uvicorn sets `started` once it listens
            if self.server.started:
                break
            await asyncio.sleep(0.01)
        assert self.server.started, "the test OIDC provider did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.issuer = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.server is not None
        assert self.task is not None
        self.server.should_exit = True
        await self.task
