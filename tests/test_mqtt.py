"""Devices over MQTT, end to end through a real broker (RabbitMQ) and a real `tenantry serve`.

The broker asks the server's hooks who may connect and which topics each device may use; the
server's bridge stores uplinks through the data plane and publishes operations. Devices here are
paho-mqtt clients, as in docs/mqtt.md. Skipped, saying why, where RabbitMQ cannot be installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import text

from app.db.naming import tenant_schema
from app.runtime.platform import Platform
from app.settings import Settings
from tests import broker as rabbit
from tests.conftest import Api, TenantHandle, World
from tests.test_docs import ROOT, blocks
from tests.test_stops import TENANTRY, _env

pytestmark = pytest.mark.skipif(rabbit.missing() is not None, reason=rabbit.missing() or "")

DEVICE = "mutation($n: String!) { createDevice(input: {name: $n}) { id } }"
TOKEN = "mutation($d: ID!) { createDeviceToken(deviceId: $d) { token } }"


class Served:
    """`tenantry serve` with its bridge, and the broker whose hooks it answers."""

    def __init__(self, settings: Settings, base: Path) -> None:
        self.port = rabbit.free_port()
        self.broker = rabbit.Broker(base / "broker", f"http://127.0.0.1:{self.port}")
        self.env = _env(settings, TENANTRY_PORT=str(self.port), TENANTRY_LOG_LEVEL="WARNING",
                        TENANTRY_MQTT_AMQP_URL=self.broker.amqp_url,
                        TENANTRY_MQTT_MANAGEMENT_URL=self.broker.management_url,
                        TENANTRY_MQTT_QUEUE=f"tenantry.uplinks.{self.port}")
        self.log = (base / "server.log").open("ab")
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(*TENANTRY, "serve", env=self.env, stdout=self.log,
                                                            stderr=self.log)
        await until(self.consuming, what="the bridge to consume")

    async def consuming(self) -> bool:
        queue = self.env["TENANTRY_MQTT_QUEUE"]
        async with httpx.AsyncClient(auth=("guest", "guest"), timeout=2) as client:
            with contextlib.suppress(httpx.HTTPError):
                found = await client.get(f"http://127.0.0.1:{self.broker.management}/api/queues/%2F/{queue}")
                return found.status_code == 200 and int(found.json().get("consumers", 0)) > 0
        return False

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)
            await asyncio.wait_for(self.process.wait(), 20)
        self.process = None


async def until(check: Callable[[], Any], *, what: str, seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"waited {seconds:.0f} s for {what}")


class Device:
    """A paho-mqtt client as a device would run it (docs/mqtt.md)."""

    def __init__(self, port: int, username: str, password: str, client_id: str | None = None) -> None:
        self.connack: Any = None
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.subacks: list[list[int]] = []
        self.disconnected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or username, clean_session=False)
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: setattr(self, "connack", rc)
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, orjson.loads(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.append([int(x.value) for x in codes])
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.port = port

    async def connect(self) -> Any:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        await until(lambda: self.connack is not None, what="CONNACK")
        if self.connack.is_failure:
            self.client.loop_stop()
        return self.connack

    async def publish(self, topic: str, payload: object, qos: int = 1) -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        info = self.client.publish(topic, body, qos=qos)
        await asyncio.to_thread(info.wait_for_publish, 10)

    async def subscribe(self, topic: str) -> list[int]:
        before = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        await until(lambda: len(self.subacks) > before, what="SUBACK")
        return self.subacks[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _answered(client: Device) -> bool:
    return bool(client.subacks) or client.disconnected.is_set()


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[Served]:
    base = Path(tempfile.mkdtemp(prefix="tenantry-mqtt-"))
    running = Served(settings, base)
    await asyncio.to_thread(running.broker.start)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()
        await asyncio.to_thread(running.broker.remove)


async def _device(api: Api, t: TenantHandle, name: str = "sensor") -> tuple[str, str]:
    device = (await api.gql(DEVICE, {"n": name}, token=t.token, tenant=t.id)).data["createDevice"]["id"]
    token = (await api.gql(TOKEN, {"d": device}, token=t.token, tenant=t.id)).data["createDeviceToken"]["token"]
    return str(device), str(token)


async def _count(api: Api, t: TenantHandle, what: str, device: str) -> int:
    query = {"measurements": "{ measurements(deviceId: $d, first: 500) { edges { node { id } } } }",
             "events": "{ events(deviceId: $d, first: 500) { edges { node { id } } } }",
             "alarms": "{ alarms(filter: {deviceId: $d}, first: 500) { edges { node { id } } } }"}[what]
    result = await api.gql(f"query($d: ID!) {query}", {"d": device}, token=t.token, tenant=t.id)
    return len(result.data[what]["edges"])


async def _metric(served: Served, token: str, name: str) -> float:
    """A counter of the served process, read from its /metrics as the operator."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
        text_ = (await client.get("/metrics", headers={"authorization": f"Bearer {token}"})).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text_.splitlines() if line.startswith(name))


async def test_a_device_sends_data_and_works_its_operations_over_mqtt(served: Served, api: Api,
                                                                     world: World) -> None:
    t = await world.tenant()
    device, token = await _device(api, t)
    client = Device(served.broker.mqtt, device, token)
    assert not (await client.connect()).is_failure
    try:
        assert await client.subscribe(f"t/{t.id}/d/{device}/#") == [1]
        up = f"t/{t.id}/d/{device}/up"
        await client.publish(f"{up}/measurements", {"type": "c8y_Temperature", "series": "T", "value": 21.5,
                                                    "unit": "C", "time": "2026-01-01T00:00:00Z"})
        await client.publish(f"{up}/measurements", [{"type": "c8y_Temperature", "series": "T", "value": v}
                                                    for v in (1, 2, 3)])
        await client.publish(f"{up}/measurements", {"type": "c8y_Voltage", "series": "V", "unit": "V",
                                                    "values": [[1767225600 + i, i / 10] for i in range(50)]})
        await client.publish(f"{up}/events", {"type": "boot", "text": "started", "attributes": {"fw": "1.2"}})
        await client.publish(f"{up}/alarms", {"type": "battery", "severity": "MINOR", "text": "5%"})

        async def stored() -> bool:
            return (await _count(api, t, "measurements", device)) == 54 and \
                (await _count(api, t, "events", device)) == 1 and (await _count(api, t, "alarms", device)) == 1
        await until(stored, what="the uplinks to be stored")

        created = await api.gql('mutation($d: ID!) { createOperation(input: {deviceId: $d, description: "reboot", '
                                'payload: {delay: 5}}) { id } }', {"d": device}, token=t.token, tenant=t.id)
        operation = created.data["createOperation"]["id"]
        await until(lambda: any(topic.endswith("/down/operations") for topic, _ in client.received),
                    what="the operation on the device's downlink", seconds=10)
        topic, body = next(m for m in client.received if m[0].endswith("/down/operations"))
        assert topic == f"t/{t.id}/d/{device}/down/operations"
        assert (body["id"], body["status"], body["description"], body["payload"]) == \
            (operation, "PENDING", "reboot", {"delay": 5})

        await client.publish(f"{up}/operations/{operation}", {"status": "EXECUTING"})
        await client.publish(f"{up}/operations/{operation}", {"status": "SUCCESSFUL"})
        status = "query($id: ID!) { node(id: $id) { ... on Operation { status } } }"

        async def done() -> bool:
            found = await api.gql(status, {"id": operation}, token=t.token, tenant=t.id)
            return bool(found.data["node"]["status"] == "SUCCESSFUL")
        await until(done, what="the device's status report")
        # Metered and audited like the GraphQL mutations.
        trail = await api.gql("{ auditLog(first: 50, filter: {plane: DATA}) { edges { node { action actorType } } } }",
                              token=t.token, tenant=t.id)
        actions = {(e["node"]["action"], e["node"]["actorType"]) for e in trail.data["auditLog"]["edges"]}
        assert ("operation.status", "device") in actions
        assert ("alarm.raised", "device") in actions
    finally:
        client.close()


async def test_the_broker_refuses_what_is_not_the_devices_own(served: Served, api: Api, world: World,
                                                             platform: Platform) -> None:
    a, b = await world.tenant(), await world.tenant()
    device_a, token_a = await _device(api, a)
    device_b, token_b = await _device(api, b)
    port = served.broker.mqtt
    # Wrong or borrowed credentials, another device's client id (its queued downlinks): no connection.
    for username, password, client_id in ((device_a, token_b, None), (device_a, token_a + "x", None),
                                          (device_b, token_a, None), (device_a, token_a, device_b),
                                          ("admin", token_a, None)):
        refused = Device(port, username, password, client_id)
        assert (await refused.connect()).is_failure, (username, client_id)
    # Another tenant's or device's downlinks, wildcards above its own device, its own uplinks: refused
    # (RabbitMQ closes the connection; other brokers answer SUBACK 0x80). Its own downlinks: granted.
    own = f"t/{a.id}/d/{device_a}/#"
    for topic in (f"t/{b.id}/d/{device_b}/#", "#", f"t/{a.id}/d/+/#", f"t/+/d/{device_a}/#", "t/#", own):
        client = Device(port, device_a, token_a)
        assert not (await client.connect()).is_failure
        try:
            client.client.subscribe(topic, qos=1)
            await until(partial(_answered, client), what="SUBACK or a disconnection")
            granted = bool(client.subacks) and client.subacks[0] == [1]
            assert granted == (topic == own), topic
        finally:
            client.close()
    # Publishing into another tenant: the broker closes the connection and nothing reaches B.
    intruder = Device(port, device_a, token_a)
    assert not (await intruder.connect()).is_failure
    intruder.client.publish(f"t/{b.id}/d/{device_b}/up/alarms", orjson.dumps(
        {"type": "x", "severity": "MAJOR", "text": "forged"}), qos=1)
    await until(intruder.disconnected.is_set, what="the broker to close the connection")
    intruder.client.loop_stop()
    await asyncio.sleep(1.0)
    assert await _count(api, b, "alarms", device_b) == 0
    async with platform.db.owner.connect() as conn:  # at the SQL level too
        count = (await conn.execute(text(f"SELECT count(*) FROM {tenant_schema(b.id)}.alarms"))).scalar_one()
    assert count == 0


async def test_bad_messages_are_answered_on_the_error_topic_and_the_bridge_goes_on(
        served: Served, api: Api, world: World, operator_token: str) -> None:
    t = await world.tenant()
    device, token = await _device(api, t)
    client = Device(served.broker.mqtt, device, token)
    assert not (await client.connect()).is_failure
    try:
        await client.subscribe(f"t/{t.id}/d/{device}/errors")
        up = f"t/{t.id}/d/{device}/up"
        await client.publish(f"{up}/measurements", b"{not json")
        await client.publish(f"{up}/measurements", {"type": "c", "series": "s", "value": 1, "colour": "red"})
        await client.publish(f"{up}/measurements", {"type": "c", "series": "s", "value": "hot"})
        await client.publish(f"{up}/alarms", {"type": "x", "severity": "APOCALYPTIC", "text": "t"})
        await client.publish(f"{up}/operations/T3BlcmF0aW9uOnQxOjE", {"status": "SUCCESSFUL"})
        await client.publish(f"{up}/measurements", {"type": "c", "series": "s", "value": 7})
        await until(lambda: len(client.received) >= 5, what="five answers on the error topic")
        await until(lambda: _count(api, t, "measurements", device), what="the good message after the bad ones")
        answers = [body for _, body in client.received]
        assert [a["code"] for a in answers] == ["INVALID_INPUT"] * 4 + ["NOT_FOUND"]
        assert "not JSON" in answers[0]["message"]
        assert [a.get("field") for a in answers[1:4]] == ["colour", "value", "severity"]
        assert all(a["topic"].startswith(f"t/{t.id}/d/{device}/up/") for a in answers)
        # Oversized messages never reach the bridge: the broker refuses them.
        big = orjson.dumps([{"type": "c", "series": "s", "value": 1}] * 20_000)
        assert len(big) > rabbit.MAX_MESSAGE
        sent = client.client.publish(f"{up}/measurements", big, qos=1)
        await asyncio.sleep(3.0)
        # RabbitMQ 3.10 refuses it on its channel (max_message_size) and never acknowledges it.
        assert not sent.is_published()
        assert await _count(api, t, "measurements", device) == 1
        assert (await _metric(served, operator_token, 'tenantry_mqtt_messages_total{outcome="invalid"}')) >= 4
    finally:
        client.close()


async def test_a_revoked_token_is_disconnected_and_cannot_connect_again(served: Served, api: Api,
                                                                      world: World) -> None:
    t = await world.tenant()
    device, token = await _device(api, t)
    client = Device(served.broker.mqtt, device, token)
    assert not (await client.connect()).is_failure
    client.client.reconnect_delay_set(60, 60)  # a device retries later; here: not before the test ends
    revoked = await api.gql("mutation($d: ID!) { revokeDeviceTokens(deviceId: $d) }", {"d": device},
                            token=t.token, tenant=t.id)
    assert revoked.data["revokeDeviceTokens"] == 1
    await until(client.disconnected.is_set, what="the broker to drop the revoked device", seconds=15)
    client.client.loop_stop()
    again = Device(served.broker.mqtt, device, token)
    assert (await again.connect()).is_failure


async def test_qos1_uplinks_survive_a_bridge_and_a_broker_restart(served: Served, api: Api, world: World) -> None:
    t = await world.tenant()
    device, token = await _device(api, t)
    client = Device(served.broker.mqtt, device, token)
    assert not (await client.connect()).is_failure
    up = f"t/{t.id}/d/{device}/up/measurements"
    await client.publish(up, {"type": "c", "series": "n", "value": 0})
    await until(lambda: _count(api, t, "measurements", device), what="the first uplink")
    await served.stop(signal.SIGKILL)  # the bridge dies without a goodbye
    for i in range(1, 201):  # the broker acknowledges each (PUBACK) into the durable queue
        await client.publish(up, {"type": "c", "series": "n", "value": i})
    client.close()
    await asyncio.to_thread(served.broker.stop)
    await asyncio.to_thread(served.broker.start)
    await served.start()

    async def all_stored() -> bool:
        return await _count(api, t, "measurements", device) >= 201
    await until(all_stored, what="every QoS 1 uplink after both restarts", seconds=60)
    values = await api.gql("query($d: ID!) { measurements(deviceId: $d, first: 500) { edges { node { value } } } }",
                           {"d": device}, token=t.token, tenant=t.id)
    seen = sorted(e["node"]["value"] for e in values.data["measurements"]["edges"])
    # None lost; none twice of those the broker queued while the bridge was down (each acknowledged
    # once stored). The first may be stored twice: the bridge was killed once it was committed, and
    # if that was before its acknowledgement, the broker delivers it again (at least once, by design:
    # app.realtime.mqtt).
    assert [v for v in seen if v] == [float(i) for i in range(1, 201)]
    assert seen.count(0.0) in (1, 2)


async def test_the_device_example_in_the_docs_runs(served: Served, api: Api, world: World) -> None:
    (example,) = [b for b in blocks(ROOT / "docs" / "mqtt.md") if b.language == "python"]
    t = await world.tenant()
    device, token = await _device(api, t)
    env = {**os.environ, "TENANT": t.id, "DEVICE_ID": device, "DEVICE_TOKEN": token,
           "MQTT_PORT": str(served.broker.mqtt)}
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", example.code, env=env,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await until(lambda: _count(api, t, "measurements", device), what="the example's measurement")
        created = await api.gql('mutation($d: ID!) { createOperation(input: {deviceId: $d, description: "reboot"}) '
                                "{ id } }", {"d": device}, token=t.token, tenant=t.id)
        out, err = await asyncio.wait_for(agent.communicate(), 60)
    finally:
        if agent.returncode is None:
            agent.kill()
    assert agent.returncode == 0, err.decode()
    assert "executing reboot" in out.decode()

    async def reported() -> bool:
        status = await api.gql("query($id: ID!) { node(id: $id) { ... on Operation { status } } }",
                               {"id": created.data["createOperation"]["id"]}, token=t.token, tenant=t.id)
        return bool(status.data["node"]["status"] == "SUCCESSFUL")
    await until(reported, what="the example's report")
