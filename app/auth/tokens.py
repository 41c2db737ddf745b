"""Access tokens (short-lived HS256 JWTs, via joserfc) and opaque refresh-token secrets."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from app.errors import Unauthenticated

ALGORITHMS = ["HS256"]


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    default_tenant_id: str | None
    token_id: str
    expires_at: int
    reach: str | None = None  # a single sign-on session's only reach (app.access.principal.Reach)
    family: str | None = None  # the refresh-token family (login session) the token was issued in


class AccessTokens:
    def __init__(
        self,
        *,
        secret: str,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = OctKey.import_key(secret.encode())
        self._issuer = issuer
        self._audience = audience
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._verified: dict[str, AccessClaims] = {}
        self._registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            iat={"essential": True},
            sub={"essential": True},
            jti={"essential": True},
        )

    def issue(self, *, user_id: str, default_tenant_id: str | None, reach: str | None = None,
              family: str | None = None) -> str:
        now = int(self._clock())
        claims: dict[str, object] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        if default_tenant_id is not None:
            claims["tid"] = default_tenant_id
        if reach is not None:
            claims["rch"] = reach
        if family is not None:
            claims["fam"] = family
        return jwt.encode({"alg": "HS256"}, claims, self._key, algorithms=ALGORITHMS)

    def verify(self, token: str) -> AccessClaims:
        """Check signature, issuer, audience and expiry. A token verified before is taken
        from a small cache (its expiry still checked): a SPA sends the same token with every
        request, and the HMAC plus claim checks are a tenth of a small request's cost."""
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at > self._clock():
                return cached
            del self._verified[token]
        claims = self._verify(token)
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> AccessClaims:
        try:
            decoded = jwt.decode(token, self._key, algorithms=ALGORITHMS)
            self._registry.validate(decoded.claims)
        except JoseError as exc:
            raise Unauthenticated("invalid or expired access token") from exc
        except ValueError as exc:  # malformed compact serialisation
            raise Unauthenticated("invalid or expired access token") from exc
        claims = decoded.claims
        tid = claims.get("tid")
        reach = claims.get("rch")
        family = claims.get("fam")
        return AccessClaims(
            user_id=str(claims["sub"]),
            default_tenant_id=tid if isinstance(tid, str) else None,
            token_id=str(claims["jti"]),
            expires_at=int(claims["exp"]),
            reach=reach if isinstance(reach, str) else None,
            family=family if isinstance(family, str) else None,
        )


def new_secret(prefix: str) -> str:
    """A random bearer secret with a recognisable prefix (easy to spot in leaked logs)."""
    return prefix + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> bytes:
    # Secrets are 256 random bits, so a fast hash is enough; no salt or stretching needed.
    return hashlib.sha256(secret.encode()).digest()
