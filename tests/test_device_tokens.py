"""Device credentials: a token lets one device, in one tenant, send its own data and work its operations."""

from __future__ import annotations

from tests.conftest import Api, TenantHandle, World

TOKEN = "mutation($d: ID!) { createDeviceToken(deviceId: $d) { token deviceId } }"


async def _device(api: Api, t: TenantHandle, name: str) -> str:
    result = await api.gql("mutation($n: String!) { createDevice(input: {name: $n}) { id } }", {"n": name},
                           token=t.token, tenant=t.id)
    return str(result.data["createDevice"]["id"])


async def test_a_device_sends_its_own_data_and_works_its_operations(api: Api, world: World) -> None:
    t = await world.tenant()
    mine, other = await _device(api, t, "mine"), await _device(api, t, "other")
    token = (await api.gql(TOKEN, {"d": mine}, token=t.token, tenant=t.id)).data["createDeviceToken"]["token"]
    assert token.startswith(f"tdev_{t.id}_")

    sent = await api.gql("""mutation($d: ID!) {
        createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", type: "c", series: "t", value: 1}])
        createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "boot", text: "up"}) { id }
        raiseAlarm(input: {deviceId: $d, type: "low-battery", severity: MINOR, text: "5%"}) { id } }""",
                         {"d": mine}, token=token)
    assert sent.data["createMeasurements"] == 1

    for_other = await api.gql("""mutation($d: ID!) {
        createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", type: "c", series: "t", value: 1}])
        }""", {"d": other}, token=token)
    assert for_other.code == "FORBIDDEN"
    for mutation in ('createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "x", text: "x"}) { id }',
                     'raiseAlarm(input: {deviceId: $d, type: "x", severity: MINOR, text: "x"}) { id }'):
        result = await api.gql(f"mutation($d: ID!) {{ {mutation} }}", {"d": other}, token=token)
        assert result.code == "FORBIDDEN", mutation

    ops = {}
    for device in (mine, other):
        created = await api.gql('mutation($d: ID!) { createOperation(input: {deviceId: $d, description: "reboot"}) '
                                "{ id } }", {"d": device}, token=t.token, tenant=t.id)
        ops[device] = created.data["createOperation"]["id"]
    visible = await api.gql("{ operations { edges { node { id deviceId } } } }", token=token)
    assert visible.data["operations"]["edges"] == [{"node": {"id": ops[mine], "deviceId": mine}}]
    move = "mutation($id: ID!) { updateOperationStatus(id: $id, status: EXECUTING) { status } }"
    assert (await api.gql(move, {"id": ops[mine]}, token=token)).data["updateOperationStatus"]["status"] == "EXECUTING"
    assert (await api.gql(move, {"id": ops[other]}, token=token)).code == "NOT_FOUND"

    # Nothing else: no inventory reads, no management plane, no user-only queries.
    for query in ("{ devices { totalCount } }", "{ tenants { totalCount } }", "{ alarms { totalCount } }"):
        assert (await api.gql(query, token=token)).code == "FORBIDDEN", query
    assert (await api.gql("{ me { user { id } } }", token=token)).code == "FORBIDDEN"
    create_op = await api.gql('mutation($d: ID!) { createOperation(input: {deviceId: $d, description: "x"}) { id } }',
                              {"d": mine}, token=token)
    assert create_op.code == "FORBIDDEN"


async def test_a_device_token_works_only_in_its_tenant_and_until_revoked(api: Api, world: World) -> None:
    a, b = await world.tenant(), await world.tenant()
    device = await _device(api, a, "d")
    token = (await api.gql(TOKEN, {"d": device}, token=a.token, tenant=a.id)).data["createDeviceToken"]["token"]
    query = "{ operations { edges { node { id } } } }"
    assert (await api.gql(query, token=token)).data["operations"]["edges"] == []
    assert (await api.gql(query, token=token, tenant=b.id)).code == "FORBIDDEN"
    # The same secret presented as another tenant's token is not found there.
    forged = token.replace(f"tdev_{a.id}_", f"tdev_{b.id}_")
    assert (await api.gql(query, token=forged)).code == "UNAUTHENTICATED"
    assert (await api.gql(query, token="tdev_garbage")).code == "UNAUTHENTICATED"

    revoked = await api.gql("mutation($d: ID!) { revokeDeviceTokens(deviceId: $d) }", {"d": device}, token=a.token,
                            tenant=a.id)
    assert revoked.data["revokeDeviceTokens"] == 1
    assert (await api.gql(query, token=token)).code == "UNAUTHENTICATED"


async def test_device_tokens_stop_when_the_tenant_is_suspended(api: Api, world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t, "d")
    token = (await api.gql(TOKEN, {"d": device}, token=t.token, tenant=t.id)).data["createDeviceToken"]["token"]
    await api.gql("mutation($id: ID!) { suspendTenant(id: $id) { id } }", {"id": t.id}, token=world.operator_token,
                  tenant="management")
    assert (await api.gql("{ operations { edges { node { id } } } }", token=token)).code == "TENANT_SUSPENDED"
