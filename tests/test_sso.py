"""OIDC single sign-on end to end against a real provider (HTTP, signed id_tokens, JWKS)."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlparse

import httpx
from sqlalchemy import text

from app.main import create_app
from app.runtime.platform import Platform
from tests.conftest import ADMIN_EMAIL, Api, World
from tests.oidc_provider import FakeProvider

CONFIGURE = """mutation($i: SingleSignOnInput!) { configureSingleSignOn(input: $i) {
  issuer configuredIn inherit loginPath } }"""


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


async def _sign_in_path(http: httpx.AsyncClient, path: str) -> httpx.Response:
    """_sign_in from a given login path (e.g. a link's)."""
    start = await http.get(path)
    if start.status_code != 302:
        return start
    async with httpx.AsyncClient() as browser:
        at_provider = await browser.get(start.headers["location"])
    back = urlparse(at_provider.headers["location"])
    return await http.get(f"{back.path}?{back.query}")


async def _configure(api: Api, tenant_token: str, tenant_id: str, idp: FakeProvider,
                     **extra: object) -> dict[str, object]:
    result = await api.gql(CONFIGURE, {"i": {"issuer": idp.issuer, "clientId": idp.client_id,
                                             "clientSecret": idp.client_secret,
                                             "roleMapping": {"iot-admins": "ADMIN", "iot-readers": "READER"},
                                             **extra}}, token=tenant_token, tenant=tenant_id)
    return result.data["configureSingleSignOn"]  # type: ignore[no-any-return]


async def test_an_inherited_provider_gives_parent_level_access_never_a_direct_membership(
        http: httpx.AsyncClient, api: Api, world: World, provider: FakeProvider, platform: Platform) -> None:
    """Regression (hole 2): a parent's inherited provider mapping to ADMIN used to create a direct
    ADMIN membership in the child, so the parent read the child's data although the child's
    parentAccess was MANAGEMENT_ONLY."""
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    await api.gql('mutation { createDevice(input: {name: "child-device"}) { id } }', token=child.token,
                  tenant=child.id)
    configured = await _configure(api, ent.token, ent.id, provider, inherit=True)
    assert configured["configuredIn"] == ent.id

    provider.user = {"sub": "tech-1", "email": "field.tech@customer.test", "email_verified": True,
                     "roles": ["iot-admins"]}
    signed_in = await _sign_in(http, child.id)
    assert signed_in.status_code == 200, signed_in.text
    tokens = signed_in.json()
    assert tokens["tenantId"] == child.id
    token = tokens["accessToken"]
    # The child's management plane, as a parent-level member…
    assert (await api.gql("{ tenant { id } }", token=token, tenant=child.id)).data["tenant"]["id"] == child.id
    # …but not its data while the child keeps parentAccess MANAGEMENT_ONLY.
    assert (await api.gql("{ devices { totalCount } }", token=token, tenant=child.id)).code == "FORBIDDEN"
    async with platform.db.owner.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT m.tenant_id, m.role, m.scope FROM tenantry.memberships m JOIN tenantry.users u ON u.id = m.user_id "
            "WHERE u.email = 'field.tech@customer.test'"))).all()
    assert [tuple(r) for r in rows] == [(ent.id, "ADMIN", "SUBTREE")]  # nothing direct in the child

    opened = await api.gql("mutation { setParentAccess(policy: FULL) { parentAccess } }", token=child.token,
                           tenant=child.id)
    assert opened.data["setParentAccess"]["parentAccess"] == "FULL"
    assert (await api.gql("{ devices { totalCount } }", token=token, tenant=child.id)).data["devices"] == {
        "totalCount": 1}

    provider.user = {**provider.user, "roles": ["iot-readers"]}  # the provider now says reader
    again = (await _sign_in(http, child.id)).json()
    demoted = await api.gql('mutation { createDevice(input: {name: "x"}) { id } }', token=again["accessToken"],
                            tenant=child.id)
    assert demoted.code == "FORBIDDEN"  # READER, as mapped

    provider.user = {"sub": "stranger", "email": "stranger@customer.test", "roles": ["guests"]}
    assert (await _sign_in(http, child.id)).status_code == 403
    async with platform.db.owner.connect() as conn:
        stored = (await conn.execute(text("SELECT client_secret_encrypted FROM tenantry.identity_providers "
                                          "WHERE tenant_id = :t"), {"t": ent.id})).scalar_one()
    assert provider.client_secret.encode() not in stored


async def test_a_provider_claiming_an_existing_email_never_signs_in_to_that_account(
        http: httpx.AsyncClient, api: Api, world: World, provider: FakeProvider, platform: Platform,
        operator_token: str) -> None:
    """Regression (hole 1): any tenant admin could run a provider claiming the management admin's
    email and get a session as that admin, with all their memberships."""
    attacker = await world.tenant()
    await _configure(api, attacker.token, attacker.id, provider, defaultRole="READER")
    victim = await world.tenant()
    for email in (ADMIN_EMAIL, victim.admin_email):
        provider.user = {"sub": f"evil-{email}", "email": email, "email_verified": True, "roles": ["iot-admins"]}
        refused = await _sign_in(http, attacker.id)
        assert refused.status_code == 409, refused.text
        assert refused.json()["errors"][0]["extensions"]["code"] == "CONFLICT"
        assert "accessToken" not in refused.text
    async with platform.db.owner.connect() as conn:
        links = (await conn.execute(text("SELECT count(*) FROM tenantry.external_identities WHERE issuer = :i"),
                                    {"i": provider.issuer})).scalar_one()
        joined = (await conn.execute(text(
            "SELECT count(*) FROM tenantry.memberships m JOIN tenantry.users u ON u.id = m.user_id "
            "WHERE m.tenant_id = :t AND u.email IN (:a, :v)"),
            {"t": attacker.id, "a": ADMIN_EMAIL, "v": victim.admin_email})).scalar_one()
    assert (links, joined) == (0, 0)

    # The account's owner may link the identity explicitly, while signed in; the session it then
    # gives reaches the provider's tenant only, never the owner's other tenants.
    victim_token = victim.token
    link = await api.gql("mutation($t: ID!) { startSingleSignOnLink(tenantId: $t) { loginPath } }",
                         {"t": attacker.id}, token=victim_token, tenant=victim.id)
    path = link.data["startSingleSignOnLink"]["loginPath"]
    provider.user = {"sub": "victim-at-idp", "email": victim.admin_email, "roles": ["iot-readers"]}
    linked = await _sign_in_path(http, path)
    assert linked.status_code == 200, linked.text
    session = linked.json()["accessToken"]
    assert (await api.gql("{ tenant { id } }", token=session, tenant=attacker.id)).data["tenant"]["id"] == attacker.id
    assert (await api.gql("{ tenant { id } }", token=session, tenant=victim.id)).code == "FORBIDDEN"
    refreshed = await api.gql("mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken } }",
                              {"r": linked.json()["refreshToken"]})
    assert (await api.gql("{ tenant { id } }", token=refreshed.data["refreshToken"]["accessToken"],
                          tenant=victim.id)).code == "FORBIDDEN"  # the reach survives rotation
    # The same identity signs in to the same account from now on; another identity cannot take it.
    provider.user = {"sub": "victim-at-idp", "email": "whatever@else.test", "roles": ["iot-readers"]}
    again = await _sign_in(http, attacker.id)
    assert again.json()["user"]["email"] == victim.admin_email
    tampered_link = path.replace("link=", "link=x")
    assert (await http.get(tampered_link)).status_code == 401


async def test_operators_can_restrict_the_issuers_tenants_configure(
        api: Api, world: World, provider: FakeProvider, platform: Platform) -> None:
    t = await world.tenant()
    restricted = dataclasses.replace(platform, settings=platform.settings.with_(
        oidc_allowed_issuers=("https://login.example.com",)))
    transport = httpx.ASGITransport(app=create_app(platform=restricted))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test") as client:
        configure = {"issuer": provider.issuer, "clientId": "c", "clientSecret": "s", "roleMapping": {}}
        refused = await Api(client).gql(CONFIGURE, {"i": configure}, token=t.token, tenant=t.id)
        assert refused.code == "FORBIDDEN"
        allowed = await Api(client).gql(CONFIGURE, {"i": {**configure, "issuer": "https://login.example.com"}},
                                        token=t.token, tenant=t.id)
        assert allowed.data["configureSingleSignOn"]["issuer"] == "https://login.example.com"


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
