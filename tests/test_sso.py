"""OIDC single sign-on end to end against a real provider (HTTP, signed id_tokens, JWKS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from sqlalchemy import text

from app.platform import Platform
from tests.conftest import Api, World
from tests.oidc_provider import FakeProvider

CONFIGURE = """mutation($i: SingleSignOnInput!) { configureSingleSignOn(input: $i) {
  issuer configuredIn inherit loginPath } }"""


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    idp = FakeProvider()
    await idp.start()
    yield idp
    await idp.stop()


async def _sign_in(http: httpx.AsyncClient, tenant_id: str, next_url: str | None = None) -> httpx.Response:
    """Browser steps: our login → the provider's authorize → our callback."""
    params = {"next": next_url} if next_url else {}
    start = await http.get(f"/auth/oidc/{tenant_id}/login", params=params)
    if start.status_code != 302:
        return start
    async with httpx.AsyncClient() as browser:
        at_provider = await browser.get(start.headers["location"])
    assert at_provider.status_code in (302, 307), at_provider.text
    back = urlparse(at_provider.headers["location"])
    return await http.get(f"{back.path}?{back.query}")


async def _configure(api: Api, tenant_token: str, tenant_id: str, idp: FakeProvider,
                     **extra: object) -> dict[str, object]:
    result = await api.gql(CONFIGURE, {"i": {"issuer": idp.issuer, "clientId": idp.client_id,
                                             "clientSecret": idp.client_secret,
                                             "roleMapping": {"iot-admins": "ADMIN", "iot-readers": "READER"},
                                             **extra}}, token=tenant_token, tenant=tenant_id)
    return result.data["configureSingleSignOn"]  # type: ignore[no-any-return]


async def test_sign_in_through_an_inherited_provider_maps_roles(http: httpx.AsyncClient, api: Api, world: World,
                                                                provider: FakeProvider, platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    configured = await _configure(api, ent.token, ent.id, provider, inherit=True)
    assert configured["configuredIn"] == ent.id

    provider.user = {"email": "field.tech@customer.test", "email_verified": True, "roles": ["iot-readers"]}
    signed_in = await _sign_in(http, child.id)
    assert signed_in.status_code == 200, signed_in.text
    tokens = signed_in.json()
    assert tokens["tenantId"] == child.id
    member = await api.gql("{ tenant { id } devices { totalCount } }", token=tokens["accessToken"], tenant=child.id)
    assert member.data["tenant"]["id"] == child.id
    denied = await api.gql('mutation { createDevice(input: {name: "x"}) { id } }', token=tokens["accessToken"],
                           tenant=child.id)
    assert denied.code == "FORBIDDEN"  # READER, as mapped

    provider.user = {**provider.user, "roles": ["iot-admins"]}  # the provider now says admin
    again = (await _sign_in(http, child.id)).json()
    promoted = await api.gql('mutation { createDevice(input: {name: "x"}) { id } }', token=again["accessToken"],
                             tenant=child.id)
    assert promoted.data["createDevice"]["id"]

    provider.user = {"email": "stranger@customer.test", "roles": ["guests"]}
    assert (await _sign_in(http, child.id)).status_code == 403
    async with platform.db.owner.connect() as conn:
        stored = (await conn.execute(text("SELECT client_secret_encrypted FROM tenantry.identity_providers "
                                          "WHERE tenant_id = :t"), {"t": ent.id})).scalar_one()
    assert provider.client_secret.encode() not in stored


async def test_forged_or_replayed_tokens_are_refused(http: httpx.AsyncClient, api: Api, world: World,
                                                     provider: FakeProvider) -> None:
    t = await world.tenant()
    await _configure(api, t.token, t.id, provider, defaultRole="READER")
    provider.user = {"email": "someone@customer.test"}
    assert (await _sign_in(http, t.id)).status_code == 200
    provider.rogue_key = True  # signed by a key the provider's JWKS does not publish
    assert (await _sign_in(http, t.id)).status_code == 401
    provider.rogue_key, provider.tamper_nonce = False, True
    assert (await _sign_in(http, t.id)).status_code == 401
    tampered = await http.get("/auth/oidc/callback", params={"code": "x", "state": "not-a-state"})
    assert tampered.status_code == 401
    assert (await http.get("/auth/oidc/t000000001/login")).status_code == 404
    other = await world.tenant()  # no provider of its own, none inherited
    assert (await http.get(f"/auth/oidc/{other.id}/login")).status_code == 404


async def test_sign_in_returns_to_an_allowed_page_with_tokens_in_the_fragment(
    http: httpx.AsyncClient, api: Api, world: World, provider: FakeProvider
) -> None:
    t = await world.tenant()
    await _configure(api, t.token, t.id, provider, defaultRole="READER")
    provider.user = {"email": "spa-user@customer.test"}
    landed = await _sign_in(http, t.id, next_url="https://app.example.com/after-login")
    assert landed.status_code == 302
    target = urlparse(landed.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == "https://app.example.com/after-login"
    fragment = parse_qs(target.fragment)
    assert fragment["tenantId"] == [t.id]
    assert fragment["accessToken"][0]
    assert (await http.get(f"/auth/oidc/{t.id}/login", params={"next": "https://evil.example/"})).status_code == 400


async def test_mapped_roles_cannot_exceed_the_configuring_admin(api: Api, world: World,
                                                                provider: FakeProvider) -> None:
    t = await world.tenant()
    unknown = await api.gql(CONFIGURE, {"i": {"issuer": provider.issuer, "clientId": "c", "clientSecret": "s",
                                              "roleMapping": {"x": "NOPE"}}}, token=t.token, tenant=t.id)
    assert unknown.code == "INVALID_INPUT"
    bad_issuer = await api.gql(CONFIGURE, {"i": {"issuer": "ftp://x", "clientId": "c", "clientSecret": "s",
                                                 "roleMapping": {}}}, token=t.token, tenant=t.id)
    assert bad_issuer.code == "INVALID_INPUT"
    shown = await api.gql("{ singleSignOn { issuer } }", token=t.token, tenant=t.id)
    assert shown.data["singleSignOn"] is None
