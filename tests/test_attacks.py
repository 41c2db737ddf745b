"""Regressions of an attack pass (issue 29): each test fails without its fix."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.access.acting import tenant_transaction
from app.access.scope import UNRESTRICTED
from app.ids import decode
from app.runtime.platform import Platform
from app.services.inventory import devices
from tests.conftest import PASSWORD, Api, World

MOVE = "mutation($d: ID!, $p: ID!) { updateDevice(id: $d, input: {parentId: $p}) { id } }"


def _local(global_id: str) -> int:
    decoded = decode(global_id)
    assert decoded is not None
    return decoded[2]


async def test_two_concurrent_reparentings_cannot_make_a_device_cycle(api: Api, world: World,
                                                                      platform: Platform) -> None:
    t = await world.tenant()
    made = await api.gql('mutation { a: createDevice(input: {name: "a"}) { id } b: createDevice(input: {name: "b"}) '
                         "{ id } }", token=t.token, tenant=t.id)
    a, b = made.data["a"]["id"], made.data["b"]["id"]
    # One re-parenting (a under b) is under way in another transaction, not yet committed...
    tx = tenant_transaction(platform.db.app, t.id)
    await devices.update_device(tx, UNRESTRICTED, a, devices.DeviceChanges(parent_id=_local(b)))
    # ...while a request puts b under a: it must wait for the first and then see the cycle.
    request = asyncio.create_task(api.gql(MOVE, {"d": b, "p": a}, token=t.token, tenant=t.id))
    await asyncio.sleep(0.5)
    assert not request.done(), "the second re-parenting did not wait for the first"
    await tx.finish(commit=True)
    answer = await request
    assert answer.code == "INVALID_INPUT"
    assert (await api.gql("mutation($d: ID!) { deleteDevice(id: $d) }", {"d": b}, token=t.token,
                          tenant=t.id)).data["deleteDevice"] is True


async def test_every_tree_query_ends_even_on_a_cycle_made_behind_the_api(api: Api, world: World,
                                                                         platform: Platform) -> None:
    """A cycle written by hand (a restore, an operator's SQL) never makes a recursive query spin."""
    t = await world.tenant()
    made = await api.gql('mutation { a: createDevice(input: {name: "a"}) { id } b: createDevice(input: {name: "b"}) '
                         "{ id } }", token=t.token, tenant=t.id)
    a, b = _local(made.data["a"]["id"]), _local(made.data["b"]["id"])
    async with platform.db.owner.begin() as conn:
        await conn.execute(text(f"UPDATE t_{t.id}.devices SET parent_id = :p WHERE id = :d"), {"p": b, "d": a})
        await conn.execute(text(f"UPDATE t_{t.id}.devices SET parent_id = :p WHERE id = :d"), {"p": a, "d": b})
    moved = await asyncio.wait_for(api.gql(MOVE, {"d": made.data["a"]["id"], "p": made.data["b"]["id"]},
                                           token=t.token, tenant=t.id), 10)
    assert moved.code == "INVALID_INPUT"
    deleted = await asyncio.wait_for(api.gql("mutation($d: ID!) { deleteDevice(id: $d) }", {"d": made.data["a"]["id"]},
                                             token=t.token, tenant=t.id), 10)
    assert deleted.data["deleteDevice"] is True


async def test_access_tokens_die_with_their_login_session_over_http(api: Api, world: World) -> None:
    """logout, changePassword (other sessions) and a reset ended the refresh tokens only: the access
    tokens of those sessions kept working, and could mint API tokens, until they expired."""
    t = await world.tenant()
    first = await api.login(t.admin_email, PASSWORD, t.id)
    second = await api.login(t.admin_email, PASSWORD, t.id)
    mint = 'mutation { createApiToken(name: "x", permissions: ["devices:read"]) { token } }'
    for query in ("{ me { user { email } } }", "{ devices { totalCount } }", mint):
        assert not (await api.gql(query, token=first["accessToken"], tenant=t.id)).errors
    await api.gql("mutation($r: String!) { logout(refreshToken: $r) }", {"r": first["refreshToken"]})
    for query in ("{ me { user { email } } }", "{ devices { totalCount } }", mint):
        assert (await api.gql(query, token=first["accessToken"], tenant=t.id)).code == "UNAUTHENTICATED", query
    third = await api.login(t.admin_email, PASSWORD, t.id)
    changed = await api.gql('mutation($p: String!) { changePassword(currentPassword: $p, newPassword: "new-pass-456") '
                            "}", {"p": PASSWORD}, token=third["accessToken"])
    assert changed.data["changePassword"] is True
    assert (await api.gql(mint, token=second["accessToken"], tenant=t.id)).code == "UNAUTHENTICATED"
    assert not (await api.gql(mint, token=third["accessToken"], tenant=t.id)).errors  # the session that asked
