"""Self sign-up with email verification, and sign-up through an invitation."""

from __future__ import annotations

import dataclasses
import re

import httpx
from sqlalchemy import text

from app.main import create_app
from app.runtime.platform import Platform
from tests.conftest import Api, World, unique

SIGN_UP = """mutation($e: String!, $p: String!, $c: String!, $i: String) {
  signUp(email: $e, password: $p, company: $c, invitationToken: $i) { status email tenant { id domain } } }"""
VERIFY = "mutation($t: String!) { verifySignUp(token: $t) { accessToken tenant { id kind parentId company } } }"


async def _mailed(platform: Platform, email: str, prefix: str) -> str | None:
    async with platform.db.owner.connect() as conn:
        bodies = (await conn.execute(text("SELECT body FROM tenantry.outbox WHERE recipient = :e ORDER BY id DESC"),
                                     {"e": email})).scalars().all()
    for body in bodies:
        match = re.search(rf"({prefix}[A-Za-z0-9_-]+)", body)
        if match:
            return match.group(1)
    return None


async def test_sign_up_is_off_unless_configured(api: Api) -> None:
    result = await api.gql(SIGN_UP, {"e": f"{unique('s')}@x.test", "p": "a-good-password", "c": "Acme"})
    assert result.code == "FORBIDDEN"


async def test_sign_up_verifies_the_email_then_creates_user_and_tenant(world: World, platform: Platform) -> None:
    parent = await world.tenant(kind="ENTERPRISE")
    enabled = create_app(platform=dataclasses.replace(
        platform, settings=platform.settings.with_(signup_parent=parent.id)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=enabled), base_url="http://t") as client:
        api = Api(client)
        email = f"{unique('founder')}@x.test"
        weak = await api.gql(SIGN_UP, {"e": email, "p": "short", "c": "Acme"})
        assert weak.code == "INVALID_INPUT"
        sent = await api.gql(SIGN_UP, {"e": email, "p": "a-good-password", "c": "Acme Widgets!"})
        assert sent.data["signUp"] == {"status": "VERIFICATION_SENT", "email": email, "tenant": None}
        assert (await api.gql("mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
                              {"e": email, "p": "a-good-password"})).code == "UNAUTHENTICATED"  # not yet
        token = await _mailed(platform, email, "tsup_")
        assert token is not None
        verified = await api.gql(VERIFY, {"t": token})
        tenant = verified.data["verifySignUp"]["tenant"]
        assert tenant["kind"] == "STANDARD"
        assert tenant["parentId"] == parent.id
        assert tenant["company"] == "Acme Widgets!"
        me = await api.gql("{ me { memberships { tenant { id } role } } }",
                           token=verified.data["verifySignUp"]["accessToken"])
        assert me.data["me"]["memberships"] == [{"tenant": {"id": tenant["id"]}, "role": "ADMIN"}]
        assert (await api.gql(VERIFY, {"t": token})).code == "CONFLICT"  # single use
        # Signing up again with a known email reveals nothing: same answer, a different mail.
        again = await api.gql(SIGN_UP, {"e": email, "p": "a-good-password", "c": "Again"})
        assert again.data["signUp"]["status"] == "VERIFICATION_SENT"
        assert await _mailed(platform, email, "tsup_") == token


async def test_sign_up_with_an_invitation_joins_the_inviting_tenant(api: Api, world: World,
                                                                   platform: Platform) -> None:
    t = await world.tenant()
    email = f"{unique('invited')}@x.test"
    await api.gql('mutation($e: String!) { inviteMember(email: $e, role: "OPERATOR") { id } }', {"e": email},
                  token=t.token, tenant=t.id)
    token = await _mailed(platform, email, "tinv_")
    wrong = await api.gql(SIGN_UP, {"e": f"{unique('other')}@x.test", "p": "a-good-password", "c": "X", "i": token})
    assert wrong.code == "FORBIDDEN"
    joined = await api.gql(SIGN_UP, {"e": email, "p": "a-good-password", "c": "ignored", "i": token})
    assert joined.data["signUp"] == {"status": "JOINED", "email": email, "tenant": {"id": t.id, "domain": t.domain}}
    session = await api.token(email, "a-good-password", t.id)
    assert (await api.gql("{ tenant { id } }", token=session, tenant=t.id)).data["tenant"]["id"] == t.id
