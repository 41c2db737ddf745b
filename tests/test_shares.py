"""Standing shares: consent on both sides, then the source's new data follows into the target from
its change log, exactly once and in order, with its origin; revocable by either side, paused by a
suspension; invisible to every other tenant; consent never given by a parent-level caller."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from app.db.naming import tenant_schema
from app.realtime.shares import Follower
from app.runtime.platform import Platform
from tests.conftest import Api, TenantHandle, World
from tests.test_realtime import RAISE, _device

PROPOSE = """mutation($t: ID!, $d: [ID!]) { proposeShare(input: {targetTenantId: $t, deviceIds: $d,
  include: [MEASUREMENTS, EVENTS, ALARMS]}) { id state sourceAccepted targetAccepted } }"""
ACCEPT = "mutation($id: ID!) { acceptShare(id: $id) { id state lag } }"
REVOKE = "mutation($id: ID!) { revokeShare(id: $id) { state } }"
SHARES = "{ shares { id state copied lag sourceTenantId targetTenantId } }"
INGEST = """mutation($d: ID!, $v: Float!) { createMeasurements(input: [{deviceId: $d, time: "2026-05-01T00:00:00Z",
  type: "c", series: "T", value: $v}, {deviceId: $d, time: "2026-05-01T00:01:00Z", type: "c", series: "T",
  value: $v}]) }"""


async def _follow(platform: Platform, share_id: str) -> None:
    from uuid import UUID
    follower = Follower(platform.db.app)
    while await follower.step(UUID(share_id)):
        pass
    await follower.step(UUID(share_id))


async def _count(platform: Platform, tenant: TenantHandle, table: str) -> int:
    async with platform.db.owner.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {tenant_schema(tenant.id)}.{table} "
                                            "WHERE origin_tenant IS NOT NULL"))).scalar_one())


async def test_a_share_runs_only_with_both_consents_and_copies_each_change_once(
        api: Api, world: World, platform: Platform) -> None:
    source, target = await world.tenant(), await world.tenant()
    device = await _device(api, source, "shared")
    other = await _device(api, source, "private")
    proposed = (await api.gql(PROPOSE, {"t": target.id, "d": [device]}, token=source.token,
                              tenant=source.id)).data["proposeShare"]
    assert proposed["state"] == "PROPOSED"
    assert proposed["sourceAccepted"]
    assert not proposed["targetAccepted"]
    await api.gql(RAISE, {"d": device, "t": "before"}, token=source.token, tenant=source.id)
    await _follow(platform, proposed["id"])
    assert await _count(platform, target, "alarms") == 0  # nothing moves before the target consents

    again = await api.gql(ACCEPT, {"id": proposed["id"]}, token=source.token, tenant=source.id)
    assert again.data["acceptShare"]["state"] == "PROPOSED"  # the source's consent alone does not start it
    accepted = (await api.gql(ACCEPT, {"id": proposed["id"]}, token=target.token, tenant=target.id)).data
    assert accepted["acceptShare"]["state"] == "ACTIVE"

    await api.gql(RAISE, {"d": device, "t": "after"}, token=source.token, tenant=source.id)
    await api.gql(RAISE, {"d": other, "t": "not shared"}, token=source.token, tenant=source.id)
    await api.gql(INGEST, {"d": device, "v": 1.5}, token=source.token, tenant=source.id)
    await api.gql('mutation($d: ID!) { createEvent(input: {deviceId: $d, type: "e", text: "t", '
                  'time: "2026-05-01T00:00:00Z"}) { id } }', {"d": device}, token=source.token, tenant=source.id)
    await asyncio.gather(_follow(platform, proposed["id"]), _follow(platform, proposed["id"]))  # two followers
    await _follow(platform, proposed["id"])
    assert (await _count(platform, target, "alarms"), await _count(platform, target, "measurements"),
            await _count(platform, target, "events")) == (1, 2, 1)  # each once; "before" and "not shared" stay
    seen = await api.gql('{ alarms { edges { node { type } } } devices { edges { node { name } } } }',
                         token=target.token, tenant=target.id)
    assert [e["node"]["type"] for e in seen.data["alarms"]["edges"]] == ["after"]
    assert [e["node"]["name"] for e in seen.data["devices"]["edges"]] == ["shared"]  # mapped by provenance
    logged = await api.gql('{ changes(types: [ALARM, MEASUREMENT_BATCH, EVENT, SHARE]) { edges { node { type } } } }',
                           token=target.token, tenant=target.id)
    assert [e["node"]["type"] for e in logged.data["changes"]["edges"]] == [
        "SHARE", "SHARE", "SHARE", "ALARM", "MEASUREMENT_BATCH", "EVENT"]  # proposed, accepted twice
    listed = (await api.gql(SHARES, token=target.token, tenant=target.id)).data["shares"]
    assert listed[0]["copied"] == 4
    assert listed[0]["lag"] == 0

    revoked = await api.gql(REVOKE, {"id": proposed["id"]}, token=target.token, tenant=target.id)
    assert revoked.data["revokeShare"]["state"] == "REVOKED"
    await api.gql(RAISE, {"d": device, "t": "after revoke"}, token=source.token, tenant=source.id)
    await _follow(platform, proposed["id"])
    assert await _count(platform, target, "alarms") == 1


async def test_a_suspended_side_pauses_the_share_and_others_cannot_see_or_consent(
        api: Api, world: World, platform: Platform) -> None:
    parent = await world.tenant(kind="ENTERPRISE")
    source, target = await world.tenant(parent), await world.tenant(parent)
    device = await _device(api, source)
    share = (await api.gql(PROPOSE, {"t": target.id, "d": [device]}, token=source.token,
                           tenant=source.id)).data["proposeShare"]
    stranger = await world.tenant()
    for token, tenant in ((stranger.token, stranger.id),):
        refused = await api.gql(ACCEPT, {"id": share["id"]}, token=token, tenant=tenant)
        assert refused.errors[0]["extensions"]["code"] == "NOT_FOUND"
        assert (await api.gql(SHARES, token=token, tenant=tenant)).data["shares"] == []
    _, parent_level = await world.subtree_admin(parent)
    not_theirs = await api.gql(ACCEPT, {"id": share["id"]}, token=parent_level, tenant=target.id)
    assert not_theirs.errors[0]["extensions"]["code"] == "FORBIDDEN"  # consent is the tenant's own admins'
    await api.gql(ACCEPT, {"id": share["id"]}, token=target.token, tenant=target.id)
    suspended = await api.gql("mutation($id: ID!) { suspendTenant(id: $id) { status } }", {"id": source.id},
                              token=parent.token, tenant=parent.id)
    assert suspended.data["suspendTenant"]["status"] == "SUSPENDED"
    await _follow(platform, share["id"])
    state: Any = (await api.gql(SHARES, token=target.token, tenant=target.id)).data["shares"][0]["state"]
    assert state == "PAUSED"
    bad = await api.gql(PROPOSE, {"t": target.id, "d": []}, token=target.token, tenant=target.id)
    assert bad.errors[0]["extensions"]["code"] == "INVALID_INPUT"
