"""Ingest over MQTT (a real RabbitMQ, the bridge in `tenantry serve`) vs GraphQL ingest vs plain COPY.

    python -m bench.mqtt [MESSAGES]

In one run, on one embedded PostgreSQL:
- MQTT, one measurement per message: messages/s from 10 devices (QoS 1) until all are stored;
- MQTT, 1,000-row compact batches: rows/s;
- GraphQL `createMeasurements`, 1,000-row batches, four in flight, against the same server;
- plain COPY of the same rows as the owner (no routing, no validation): the baseline.
Times run from the first publish to the last row committed (rows counted in SQL).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import text

from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, Bench, bench_platform, local_id
from tests.broker import Broker, free_port, missing

BATCH = 1000
DEVICES = 10
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def main(messages: int) -> None:
    if missing():
        print(f"bench.mqtt: {missing()}")
        return
    base = Path(tempfile.mkdtemp(prefix="tnb-mqtt-"))
    port = free_port()
    broker = Broker(base / "broker", f"http://127.0.0.1:{port}")
    await asyncio.to_thread(broker.start)
    try:
        async with bench_platform() as b:
            await _run(b, broker, port, messages)
    finally:
        await asyncio.to_thread(broker.remove)


async def _run(b: Bench, broker: Broker, port: int, messages: int) -> None:
    token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
    created = await b.gql('mutation { createSubtenant(input: {domain: "mqtt", company: "M", adminEmail: "'
                          + ADMIN_EMAIL + '"}) { id } }', token=token, tenant="management")
    tenant = created["createSubtenant"]["id"]
    admin = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, tenant)
    devices = []
    for _ in range(DEVICES):
        device = (await b.gql('mutation { createDevice(input: {name: "m"}) { id } }', token=admin,
                              tenant=tenant))["createDevice"]["id"]
        secret = (await b.gql("mutation($d: ID!) { createDeviceToken(deviceId: $d) { token } }", {"d": device},
                              token=admin, tenant=tenant))["createDeviceToken"]["token"]
        devices.append((device, secret))
    server = await _serve(b, broker, port)
    try:
        clients = [_client(broker, d, s) for d, s in devices]
        single = await _mqtt(b, tenant, clients, devices, [orjson.dumps(
            {"type": "c", "series": "s", "value": i}) for i in range(messages)])
        batches = max(20, messages // 200)
        compact = [orjson.dumps({"type": "c", "series": "b", "values": [
            [int((T0 + timedelta(seconds=k * BATCH + i)).timestamp()), i / 10] for i in range(BATCH)]})
            for k in range(batches)]
        batched = await _mqtt(b, tenant, clients, devices, compact, rows_per_message=BATCH)
        graphql = await _graphql(port, tenant, admin, [d for d, _ in devices], batches)
        copy = await _copy(b, tenant, [d for d, _ in devices], batches)
        for client in clients:
            client.disconnect()
            client.loop_stop()
    finally:
        server.terminate()
        await server.wait()
    print(f"MQTT, one measurement per message: {single:,.0f} messages/s ({DEVICES} devices, QoS 1, {messages:,} sent)")
    print(f"MQTT, {BATCH:,}-row compact batches: {batched:,.0f} rows/s, {batched / copy:.2f}x plain COPY")
    print(f"GraphQL createMeasurements, {BATCH:,}-row batches, four in flight: {graphql:,.0f} rows/s, "
          f"{graphql / copy:.2f}x plain COPY")
    print(f"plain COPY as the owner, four in flight: {copy:,.0f} rows/s")


async def _serve(b: Bench, broker: Broker, port: int) -> asyncio.subprocess.Process:
    settings = b.platform.settings
    env = {**os.environ, "TENANTRY_DATABASE_URL": str(settings.database_url),
           "TENANTRY_SECRET_KEY": str(settings.secret_key), "TENANTRY_RETENTION_INTERVAL": "0",
           "TENANTRY_DATA_DIR": str(settings.data_dir), "TENANTRY_LOG_LEVEL": "WARNING",
           "TENANTRY_MQTT_AMQP_URL": broker.amqp_url, "TENANTRY_MQTT_MANAGEMENT_URL": broker.management_url}
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", "serve", "--port", str(port),
                                                  env=env, stdout=asyncio.subprocess.DEVNULL)
    async with httpx.AsyncClient(auth=("guest", "guest"), timeout=2) as client:
        for _ in range(600):
            try:
                queue = await client.get(f"http://127.0.0.1:{broker.management}/api/queues/%2F/tenantry.uplinks")
                if queue.status_code == 200 and queue.json().get("consumers"):
                    return server
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the bridge did not start")


def _client(broker: Broker, device: str, secret: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, clean_session=True)
    client.username_pw_set(device, secret)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", broker.mqtt)
    client.loop_start()
    return client


async def _stored(b: Bench, tenant: str) -> int:
    async with b.platform.db.owner.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM t_{tenant}.measurements"))).scalar_one())


async def _mqtt(b: Bench, tenant: str, clients: list[mqtt.Client], devices: list[tuple[str, str]],
                payloads: list[bytes], rows_per_message: int = 1) -> float:
    """Messages (or rows) per second, from the first publish to the last row stored."""
    before = await _stored(b, tenant)
    start = time.perf_counter()

    def publish(i: int) -> None:  # up to 100 in flight per device (paho's window), as a device would stream
        topic = f"t/{tenant}/d/{devices[i][0]}/up/measurements"
        sent = [clients[i].publish(topic, payloads[k], qos=1) for k in range(i, len(payloads), DEVICES)]
        for info in sent:
            info.wait_for_publish(120)

    await asyncio.gather(*(asyncio.to_thread(publish, i) for i in range(DEVICES)))
    expected = before + len(payloads) * rows_per_message
    while await _stored(b, tenant) < expected:  # noqa: ASYNC110 - rows in the database: no event to await
        await asyncio.sleep(0.02)
    return len(payloads) * (rows_per_message if rows_per_message > 1 else 1) / (time.perf_counter() - start)


def _rows(devices: list[str], k: int) -> list[dict[str, object]]:
    return [{"deviceId": devices[i % DEVICES], "time": (T0 + timedelta(days=1, seconds=k * BATCH + i)).isoformat(),
             "type": "c", "series": "g", "value": i / 10} for i in range(BATCH)]


async def _graphql(port: int, tenant: str, token: str, devices: list[str], batches: int) -> float:
    query = "mutation($m: [MeasurementInput!]!) { createMeasurements(input: $m) }"
    bodies = [orjson.dumps({"query": query, "variables": {"m": _rows(devices, k)}}) for k in range(batches)]
    headers = {"authorization": f"Bearer {token}", "x-tenant-id": tenant, "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        start = time.perf_counter()

        async def worker() -> None:
            while bodies:
                answer = await client.post("/graphql", content=bodies.pop(), headers=headers)
                assert orjson.loads(answer.content)["data"]["createMeasurements"] == BATCH, answer.text
        await asyncio.gather(*(worker() for _ in range(4)))
        return batches * BATCH / (time.perf_counter() - start)


async def _copy(b: Bench, tenant: str, devices: list[str], batches: int) -> float:
    copies = [[(local_id(str(r["deviceId"])), datetime.fromisoformat(str(r["time"])) + timedelta(days=1), r["type"],
                r["series"], r["value"]) for r in _rows(devices, k)] for k in range(batches)]
    start = time.perf_counter()

    async def worker() -> None:
        while copies:
            rows = copies.pop()
            async with b.platform.db.owner.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                async with driver.transaction(), driver.cursor() as cur, cur.copy(
                        f"COPY t_{tenant}.measurements (device_id, time, type, series, value) FROM STDIN") as copy:
                    for row in rows:
                        await copy.write_row(row)
    await asyncio.gather(*(worker() for _ in range(4)))
    return batches * BATCH / (time.perf_counter() - start)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
