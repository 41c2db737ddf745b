"""Accounts: change and reset a password (through the outbox), disable a user; the operator's
`tenantry users …` and `tenantry tenants delete` commands."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta

from sqlalchemy import text

from app.runtime.platform import Platform
from tests.conftest import PASSWORD, Api, World, unique
from tests.test_cli import run  # noqa: F401 - the shell fixture

CHANGE = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }"
REQUEST = "mutation($e: String!) { requestPasswordReset(email: $e) }"
RESET = "mutation($t: String!, $n: String!) { resetPassword(token: $t, newPassword: $n) }"
REFRESH = "mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken } }"
REGISTRY_TTL = 1.1  # seconds: a little over the registry cache's lifetime


async def _mails(platform: Platform, email: str) -> list[str]:
    """The reset mails queued for `email`, once the tasks queueing them (after the answer) are done."""
    await asyncio.gather(*platform.background)
    async with platform.db.owner.connect() as conn:
        return list((await conn.execute(text("SELECT body FROM tenantry.outbox WHERE lower(recipient) = lower(:e) "
                                             "AND subject = 'Reset your password' ORDER BY id"), {"e": email}))
                    .scalars())


async def test_change_password_needs_the_current_one_and_ends_other_sessions(api: Api, world: World) -> None:
    t = await world.tenant()
    other_session = await api.login(t.admin_email, PASSWORD, t.id)
    this_session = await api.login(t.admin_email, PASSWORD, t.id)
    token = this_session["accessToken"]
    wrong = await api.gql(CHANGE, {"c": "not-my-password", "n": "a-new-password-1"}, token=token)
    assert wrong.code == "UNAUTHENTICATED"
    weak = await api.gql(CHANGE, {"c": PASSWORD, "n": "short"}, token=token)
    assert weak.code == "INVALID_INPUT"
    assert (await api.gql(CHANGE, {"c": PASSWORD, "n": "a-new-password-1"}, token=token)).data["changePassword"]
    assert (await api.gql(REFRESH, {"r": other_session["refreshToken"]})).code == "UNAUTHENTICATED"
    assert (await api.gql(REFRESH, {"r": this_session["refreshToken"]})).data  # the session that asked goes on
    assert await api.token(t.admin_email, "a-new-password-1", t.id)
    old = await api.gql("mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
                        {"e": t.admin_email, "p": PASSWORD})
    assert old.code == "UNAUTHENTICATED"


async def test_password_reset_through_the_outbox_is_single_use_and_enumerates_nothing(
        api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    session = await api.login(t.admin_email, PASSWORD, t.id)
    known = await api.gql(REQUEST, {"e": t.admin_email})
    unknown = await api.gql(REQUEST, {"e": f"{unique('nobody')}@x.test"})
    assert known.body == unknown.body == {"data": {"requestPasswordReset": True}}
    mails = await _mails(platform, t.admin_email)
    assert len(mails) == 1
    token = re.search(r"(trst_[A-Za-z0-9_-]+)", mails[0]).group(1)  # type: ignore[union-attr]
    async with platform.db.owner.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*) FROM tenantry.password_resets WHERE token_hash = "
                                          "convert_to(:t, 'UTF8')"), {"t": token})).scalar_one()
    assert stored == 0  # kept hashed, never in clear
    assert (await api.gql(RESET, {"t": token, "n": "weak"})).code == "INVALID_INPUT"
    assert (await api.gql(RESET, {"t": token, "n": "reset-password-7"})).data["resetPassword"] is True
    assert (await api.gql(RESET, {"t": token, "n": "reset-password-8"})).code == "INVALID_INPUT"  # used
    assert (await api.gql(REFRESH, {"r": session["refreshToken"]})).code == "UNAUTHENTICATED"  # sessions ended
    assert await api.token(t.admin_email, "reset-password-7", t.id)


async def test_reset_tokens_expire_after_an_hour_and_mails_are_capped(api: Api, world: World,
                                                                      platform: Platform) -> None:
    t = await world.tenant()
    for _ in range(5):
        await api.gql(REQUEST, {"e": t.admin_email})
    mails = await _mails(platform, t.admin_email)
    assert len(mails) == 3  # at most three live tokens: no mail bombing
    token = re.search(r"(trst_[A-Za-z0-9_-]+)", mails[0]).group(1)  # type: ignore[union-attr]
    real_clock = platform.clock
    platform.clock = lambda: real_clock() + timedelta(hours=1, seconds=1)
    try:
        assert (await api.gql(RESET, {"t": token, "n": "reset-password-9"})).code == "INVALID_INPUT"
    finally:
        platform.clock = real_clock


async def test_a_disabled_user_signs_in_nowhere_and_their_tokens_stop(api: Api, world: World, run) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    t = await world.tenant()
    email = t.admin_email
    session = await api.login(email, PASSWORD, t.id)
    api_token = (await api.gql('mutation { createApiToken(name: "ci", permissions: ["devices:read"]) { token } }',
                               token=session["accessToken"], tenant=t.id)).data["createApiToken"]["token"]
    assert (await api.gql("{ devices { totalCount } }", token=api_token)).data
    disabled = run("users", "disable", email)
    assert disabled.returncode == 0, disabled.stderr
    await asyncio.sleep(REGISTRY_TTL)  # the CLI is another process: this one learns within its cache's TTL
    assert (await api.gql("{ tenant { id } }", token=session["accessToken"], tenant=t.id)).code == "UNAUTHENTICATED"
    assert (await api.gql("{ devices { totalCount } }", token=api_token)).code == "UNAUTHENTICATED"
    assert (await api.gql(REFRESH, {"r": session["refreshToken"]})).code == "UNAUTHENTICATED"
    login = await api.gql("mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
                          {"e": email, "p": PASSWORD})
    assert login.code == "UNAUTHENTICATED"
    listed = run("users", "list", "--json")
    mine = [json.loads(line) for line in listed.stdout.splitlines() if email in line]
    assert mine[0]["disabled"] is True
    assert run("users", "enable", email).returncode == 0
    await asyncio.sleep(REGISTRY_TTL)
    assert await api.token(email, PASSWORD, t.id)
    reset = run("users", "reset-password", email)
    generated = reset.stdout.split("(shown once):")[1].split()[0]
    assert await api.token(email, generated, t.id)
    assert run("users", "disable", "nobody@nowhere.test").returncode == 2


async def test_operators_delete_tenants_from_the_shell(api: Api, world: World, run) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    t = await world.tenant()
    deleted = run("tenants", "delete", t.id)
    assert deleted.returncode == 0, deleted.stderr
    listed = run("tenants", "list", "--status", "DELETED")
    assert t.id in listed.stdout
    assert run("tenants", "delete", t.id).returncode == 2  # gone already: not found
