"""The broker's questions answered by the access gate (POST /mqtt/auth/…, through the real ASGI app),
and the uplink payloads read at the input boundary. tests/test_mqtt.py runs the same through a real
broker; these cover every rule without one."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from starlette.applications import Starlette

from app import ids
from app.access.broker import resource_allowed, routing_levels, topic_allowed, topic_levels, vhost_allowed
from app.errors import InvalidInput
from app.services.connectivity import messages
from tests.conftest import Api, World
from tests.test_device_tokens import TOKEN, _device

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def _hook(http: httpx.AsyncClient, path: str, **fields: str) -> str:
    answer = await http.post(f"/mqtt/auth/{path}", data=fields)
    assert answer.status_code == 200
    return answer.text


async def test_a_device_logs_in_with_its_id_and_token_and_nothing_else(api: Api, world: World,
                                                                       http: httpx.AsyncClient) -> None:
    a, b = await world.tenant(), await world.tenant()
    device = await _device(api, a, "d")
    other = await _device(api, b, "d")
    token = (await api.gql(TOKEN, {"d": device}, token=a.token, tenant=a.id)).data["createDeviceToken"]["token"]
    assert await _hook(http, "user", username=device, password=token, client_id=device) == "allow"
    for username, password, client_id in ((device, token, other), (other, token, other), (device, "tdev_x", device),
                                          (device, a.token, device), ("guest", token, "guest"), ("", "", "")):
        assert await _hook(http, "user", username=username, password=password, client_id=client_id) == "deny"
    revoked = await api.gql("mutation($d: ID!) { revokeDeviceTokens(deviceId: $d) }", {"d": device},
                            token=a.token, tenant=a.id)
    assert revoked.data["revokeDeviceTokens"] == 1
    assert await _hook(http, "user", username=device, password=token, client_id=device) == "deny"


def test_topics_a_device_may_use() -> None:
    me, other = ids.encode("Device", "t000000001", 7), ids.encode("Device", "t000000002", 7)
    mine = f"t/t000000001/d/{me}"
    allowed = [(f"{mine}/up/measurements", "write"), (f"{mine}/up/events", "write"), (f"{mine}/up/alarms", "write"),
               (f"{mine}/up/operations/T3A", "write"), (f"{mine}/down/operations", "read"), (f"{mine}/errors", "read"),
               (f"{mine}/#", "read"), (f"{mine}/down/#", "read"), (f"{mine}/+", "read")]
    refused = [(f"{mine}/down/operations", "write"), (f"{mine}/errors", "write"), (f"{mine}/up/#", "write"),
               (f"{mine}/up/other", "write"), (f"{mine}/up", "write"), (f"{mine}/up/operations", "write"),
               (f"{mine}/up/operations/+", "write"), (f"{mine}/up/measurements/x", "write"),
               (f"t/t000000002/d/{other}/up/alarms", "write"), (f"t/t000000002/d/{other}/#", "read"),
               (f"t/t000000002/d/{me}/up/alarms", "write"), ("#", "read"), ("t/+/d/+/errors", "read"),
               ("t/t000000001/d/+/#", "read"), (f"t/+/d/{me}/#", "read"), (mine, "read"),
               (f"t000000001/{me}/up/alarms", "write"), (f"{mine}/up/alarms", "configure")]
    for topic, permission in allowed:
        assert topic_allowed(me, me, topic_levels(topic), permission), (topic, permission)
        assert topic_allowed(me, me, routing_levels(topic.replace("/", ".").replace("+", "*")), permission)
    for topic, permission in refused:
        assert not topic_allowed(me, me, topic_levels(topic), permission), (topic, permission)
    assert not topic_allowed(me, other, topic_levels(f"{mine}/up/alarms"), "write")  # client id bound to username
    assert vhost_allowed(me, me, "/", "/")
    assert not vhost_allowed(me, me, "other", "/")
    assert resource_allowed(me, me, "queue", f"mqtt-subscription-{me}qos1", "configure")
    assert not resource_allowed(me, me, "queue", f"mqtt-subscription-{other}qos1", "read")
    assert not resource_allowed(me, me, "exchange", "amq.direct", "write")
    assert not resource_allowed("guest", "guest", "exchange", "amq.topic", "write")


async def test_the_emqx_shaped_hooks_give_the_same_answers(api: Api, world: World, http: httpx.AsyncClient) -> None:
    t = await world.tenant()
    device = await _device(api, t, "d")
    token = (await api.gql(TOKEN, {"d": device}, token=t.token, tenant=t.id)).data["createDeviceToken"]["token"]

    async def ask(path: str, **fields: str) -> str:
        answer = await http.post(f"/mqtt/{path}", json=fields)
        assert answer.status_code == 200
        return str(answer.json()["result"])
    assert await ask("auth", username=device, password=token, clientid=device) == "allow"
    assert await ask("auth", username=device, password=token + "x", clientid=device) == "deny"
    mine = f"t/{t.id}/d/{device}"
    assert await ask("acl", username=device, clientid=device, topic=f"{mine}/up/alarms", action="publish") == "allow"
    assert await ask("acl", username=device, clientid=device, topic=f"{mine}/#", action="subscribe") == "allow"
    assert await ask("acl", username=device, clientid=device, topic="t/+/d/+/#", action="subscribe") == "deny"
    assert await ask("acl", username=device, clientid=device, topic=f"{mine}/errors", action="publish") == "deny"
    assert (await http.post("/mqtt/acl", content=b"[not json")).json()["result"] == "deny"


async def test_the_hooks_answer_only_the_broker(app: Starlette) -> None:
    outside = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
    async with httpx.AsyncClient(transport=outside, base_url="http://tenantry.test") as client:
        for path in ("user", "vhost", "resource", "topic"):
            answer = await client.post(f"/mqtt/auth/{path}", data={"username": "x", "password": "y"})
            assert (answer.status_code, answer.text) == (403, "deny")
        for path in ("auth", "acl"):
            answer = await client.post(f"/mqtt/{path}", json={"username": "x", "password": "y"})
            assert (answer.status_code, answer.json()) == (403, {"result": "deny"})


@pytest.mark.parametrize(("kind", "payload", "field"), [
    ("measurements", b"[1,", None),
    ("measurements", b"[]", None),
    ("measurements", b'{"type": "t", "series": "s"}', "value"),
    ("measurements", b'{"type": "t", "series": "s", "value": 1, "deviceId": "x"}', "deviceId"),
    ("measurements", b'{"type": "t", "series": "s", "value": true}', "value"),
    ("measurements", b'{"type": "t", "series": "s", "value": 1e400}', None),
    ("measurements", b'{"type": "t", "series": "s", "value": 1, "time": "2026-01-01T00:00:00"}', "time"),
    ("measurements", b'{"type": "t", "series": "s", "value": 1, "time": 1e30}', "time"),
    ("measurements", b'{"type": "", "series": "s", "value": 1}', "type"),
    ("measurements", b'{"type": "t\\u0000", "series": "s", "value": 1}', None),
    ("measurements", b'{"type": "t", "series": "s", "values": [[1, 2, 3]]}', "values"),
    ("measurements", b'{"type": "t", "series": "s", "values": []}', "values"),
    ("events", b'{"type": "t", "text": "x", "attributes": [1]}', "attributes"),
    ("alarms", b'{"type": "t", "text": "x", "severity": "minor"}', "severity"),
    ("operations", b'{"status": "PENDING"}', "status"),
    ("operations", b'{"status": "FAILED", "failureReason": 5}', "failureReason"),
    ("operations", b'{"id": "x", "status": "FAILED"}', "id"),
    ("operations", b'[{"status": "FAILED"}]', None),
    ("other", b"{}", None),
])
def test_bad_payloads_are_invalid_input_naming_the_field(kind: str, payload: bytes, field: str | None) -> None:
    with pytest.raises(InvalidInput) as raised:
        messages.parse(kind, "RGV2aWNlOnQxOjE", payload, NOW, "T3BlcmF0aW9uOnQxOjE")
    if field is not None:
        assert raised.value.extensions.get("field") == field, raised.value.message


def test_the_three_measurement_forms_read_alike() -> None:
    device = "RGV2aWNlOnQxOjE"
    one = messages.parse("measurements", device, b'{"type": "t", "series": "s", "value": 1, "unit": "C", '
                                                 b'"time": "2026-01-01T00:00:00Z"}', NOW)
    listed = messages.parse("measurements", device, b'[{"type": "t", "series": "s", "value": 1, "unit": "C", '
                                                    b'"time": 1767225600}]', NOW)
    compact = messages.parse("measurements", device, b'{"type": "t", "series": "s", "unit": "C", '
                                                     b'"values": [["2026-01-01T00:00:00+00:00", 1]]}', NOW)
    assert one.measurements == listed.measurements == compact.measurements
    assert one.measurements[0].time == NOW
    untimed = messages.parse("measurements", device, b'{"type": "t", "series": "s", "value": 2}', NOW)
    assert untimed.measurements[0].time == NOW  # no time: when the bridge read it
