"""Login, access-token checks (expiry, signature, claims) and refresh-token rotation."""

from __future__ import annotations

import asyncio
import time

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey
from sqlalchemy import text

from app.auth.tokens import AccessTokens, secret_hash
from app.errors import Unauthenticated
from app.runtime.platform import Platform
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD, Api, World

ME = "{ me { user { email } memberships { tenant { id kind } role } } }"
REFRESH = "mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken refreshToken } }"


async def test_wrong_email_and_wrong_password_get_the_same_error(api: Api) -> None:
    query = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"
    wrong_password = await api.gql(query, {"e": ADMIN_EMAIL, "p": "not-the-password"})
    unknown_email = await api.gql(query, {"e": "nobody@nowhere.test", "p": ADMIN_PASSWORD})
    assert wrong_password.code == unknown_email.code == "UNAUTHENTICATED"
    assert wrong_password.errors[0]["message"] == unknown_email.errors[0]["message"]


async def test_login_picks_the_default_tenant(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    only = await api.login(ent.admin_email, PASSWORD)
    assert only["tenant"]["id"] == ent.id  # the only membership
    # With two memberships and none asked for, the frontend must choose.
    await api.create_subtenant(ent.token, ent.id, domain=f"second-{ent.domain}", company="C",
                               adminEmail=ent.admin_email)
    several = await api.login(ent.admin_email, PASSWORD)
    assert several["tenant"] is None
    me = await api.gql(ME, token=several["accessToken"])
    assert len(me.data["me"]["memberships"]) == 2
    not_member = await api.gql("mutation($e: String!, $p: String!) { login(email: $e, password: $p, "
                               'tenantId: "management") { accessToken } }', {"e": ent.admin_email, "p": PASSWORD})
    assert not_member.code == "FORBIDDEN"


async def test_default_tenant_routes_requests_without_a_header(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    result = await api.gql("{ tenant { id } }", token=ent.token)
    assert result.data["tenant"]["id"] == ent.id


@pytest.mark.filterwarnings("ignore:JWS algorithm")
async def test_missing_malformed_forged_and_expired_tokens_are_unauthenticated(
    api: Api, platform: Platform
) -> None:
    assert (await api.gql(ME)).code == "UNAUTHENTICATED"
    assert (await api.gql(ME, token="not-a-jwt")).code == "UNAUTHENTICATED"
    response = await api.http.post("/graphql", json={"query": ME}, headers={"authorization": "Basic abc"})
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

    settings = platform.settings
    claims = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": "00000000-0000-0000-0000-000000000001",
              "iat": int(time.time()), "exp": int(time.time()) + 60, "jti": "x"}
    forged = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(b"some-other-key-of-enough-length-123456"))
    assert (await api.gql(ME, token=forged)).code == "UNAUTHENTICATED"
    none_alg = jwt.encode({"alg": "none"}, claims, None, algorithms=["none"])  # type: ignore[arg-type]
    assert (await api.gql(ME, token=none_alg)).code == "UNAUTHENTICATED"

    # A token issued two hours ago by the real issuer has expired (clock injected, not slept).
    past = AccessTokens(secret=settings.resolved_secret_key(), issuer=settings.jwt_issuer,
                        audience=settings.jwt_audience, ttl_seconds=900, clock=lambda: time.time() - 7200)
    old = past.issue(user_id="00000000-0000-0000-0000-000000000001", default_tenant_id=None)
    expired = await api.gql(ME, token=old)
    assert expired.code == "UNAUTHENTICATED"


def test_tokens_must_carry_the_right_issuer_and_audience() -> None:
    secret = "s" * 40

    def make(iss: str, aud: str) -> AccessTokens:
        return AccessTokens(secret=secret, issuer=iss, audience=aud, ttl_seconds=60)

    token = make("someone-else", "tenantry-api").issue(user_id="u", default_tenant_id=None)
    with pytest.raises(Unauthenticated):
        make("tenantry", "tenantry-api").verify(token)
    token = make("tenantry", "other-api").issue(user_id="u", default_tenant_id=None)
    with pytest.raises(Unauthenticated):
        make("tenantry", "tenantry-api").verify(token)
    good = make("tenantry", "tenantry-api")
    claims = good.verify(good.issue(user_id="u", default_tenant_id="t123456789"))
    assert (claims.user_id, claims.default_tenant_id) == ("u", "t123456789")


def test_a_cached_verification_still_expires() -> None:
    now = [1_000_000.0]
    tokens = AccessTokens(secret="s" * 40, issuer="i", audience="a", ttl_seconds=60, clock=lambda: now[0])
    token = tokens.issue(user_id="u", default_tenant_id=None)
    assert tokens.verify(token).user_id == "u"
    now[0] += 61
    with pytest.raises(Unauthenticated):
        tokens.verify(token)


async def test_refresh_rotates_and_reuse_after_the_grace_window_revokes_the_whole_family(
        api: Api, platform: Platform) -> None:
    first = await api.login(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
    second = (await api.gql(REFRESH, {"r": first["refreshToken"]})).data["refreshToken"]
    assert second["refreshToken"] != first["refreshToken"]
    assert (await api.gql("{ tenant { id } }", token=second["accessToken"])).data["tenant"]["id"] == "management"

    # Replaying the rotated token after the grace window (a thief, or a tab asleep for a while)
    # revokes the family...
    async with platform.db.owner.begin() as conn:
        await conn.execute(text("UPDATE tenantry.refresh_tokens SET rotated_at = rotated_at - interval '31 s' "
                                "WHERE token_hash = :h"), {"h": secret_hash(first["refreshToken"])})
    replay = await api.gql(REFRESH, {"r": first["refreshToken"]})
    assert replay.code == "UNAUTHENTICATED"
    assert "reuse" in replay.errors[0]["message"]
    # ...so the legitimate newest token is dead too.
    assert (await api.gql(REFRESH, {"r": second["refreshToken"]})).code == "UNAUTHENTICATED"
    assert (await api.gql(REFRESH, {"r": "trt_unknown"})).code == "UNAUTHENTICATED"


async def test_two_tabs_refreshing_one_token_at_once_both_get_the_same_successor(api: Api) -> None:
    first = await api.login(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
    both = await asyncio.gather(*(api.gql(REFRESH, {"r": first["refreshToken"]}) for _ in range(2)))
    successors = {r.data["refreshToken"]["refreshToken"] for r in both}
    assert len(successors) == 1, [r.body for r in both]
    # A retry after a lost answer, moments later, gets it again; the session and both access tokens live.
    retry = (await api.gql(REFRESH, {"r": first["refreshToken"]})).data["refreshToken"]
    assert retry["refreshToken"] in successors
    for answer in [*both, retry]:
        token = answer["accessToken"] if isinstance(answer, dict) else answer.data["refreshToken"]["accessToken"]
        assert (await api.gql("{ tenant { id } }", token=token)).data["tenant"]["id"] == "management"
    # Once the successor has itself been used, the old token is a reuse even within the window.
    third = (await api.gql(REFRESH, {"r": retry["refreshToken"]})).data["refreshToken"]
    stale = await api.gql(REFRESH, {"r": first["refreshToken"]})
    assert stale.code == "UNAUTHENTICATED"
    assert "reuse" in stale.errors[0]["message"]
    assert (await api.gql(REFRESH, {"r": third["refreshToken"]})).code == "UNAUTHENTICATED"


async def test_logout_revokes_the_refresh_token(api: Api) -> None:
    session = await api.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    out = await api.gql("mutation($r: String!) { logout(refreshToken: $r) }", {"r": session["refreshToken"]})
    assert out.data["logout"] is True
    assert (await api.gql(REFRESH, {"r": session["refreshToken"]})).code == "UNAUTHENTICATED"
