"""The MQTT bridge: devices' uplinks from the broker into the data plane, operations back down.

The broker is a real one (RabbitMQ's MQTT plugin; docs/mqtt.md). It asks Tenantry who may connect
and which topics each device may use (app.http.mqtt → the access gate), and the bridge, part of
every `serve` worker, does the rest over AMQP:

- **Uplinks**: one durable queue (TENANTRY_MQTT_QUEUE) bound to every device's `up/…` topics, read
  by all bridges together — RabbitMQ's shared subscription: each message goes to one of them. A
  message is acknowledged only once what it carries is committed (or it was refused and the device
  told why on its `errors` topic), so a QoS 1 message survives a bridge or broker restart: it is
  delivered again. The messages a bridge holds are applied per device in one transaction, as that
  device (`AccessGate.broker_device`) through the data plane's use cases. At least once: a bridge
  killed between COMMIT and the acknowledgement stores that batch twice.
- **Downlinks**: new operations are read from each tenant's change log (as webhooks are), woken by
  the realtime hub, and published to `t/<tenant>/d/<device>/down/operations` with publisher confirms
  before the tenant's position (`mqtt_downlinks`) moves: at least once, in log order.
- **Revocations**: when access in a tenant changes (the hub hears `tenant:<id>`), and every 30 s,
  the broker's connections of devices without live credentials are closed through its management API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import aio_pika
import httpx2
import orjson
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection

from app import ids
from app.access import broker
from app.access.acting import management_transaction, tenant_transaction
from app.errors import AppError
from app.runtime.platform import Platform
from app.services import data_plane
from app.services.connectivity import downlinks, messages, uplinks

logger = logging.getLogger("tenantry.mqtt")

SWEEP_SECONDS = 30.0  # every downlink and connection looked at this often, notifications or not
RETRY_SECONDS = 1.0  # a batch the database could not take goes back to the queue after this
# After access in a tenant changed, its connections are checked every RECHECK_SECONDS for HOT_SECONDS:
# RabbitMQ's management API lists a connection only once its statistics were collected (every 5 s
# by default), so a device that connected just before its token was revoked is found a moment later.
RECHECK_SECONDS = 1.0
HOT_SECONDS = 15.0


class Bridge:
    def __init__(self, platform: Platform) -> None:
        settings = platform.settings
        assert settings.mqtt_amqp_url is not None
        self.platform = platform
        self.url = settings.mqtt_amqp_url
        self.management_url = settings.mqtt_management_url
        self.queue = settings.mqtt_queue
        self.prefetch = max(1, settings.mqtt_prefetch)
        self.ready = asyncio.Event()
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._exchange: AbstractExchange | None = None
        self._tenants: set[str] = set()  # with a downlink position, as of the last sweep
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._suspects: set[str] = set()
        self._recheck = asyncio.Event()

    # --- hooks (the realtime hub) -------------------------------------------------------------------

    def wake(self, tenant_id: str) -> None:
        if tenant_id in self._tenants:
            self._dirty.add(tenant_id)
            self._wake.set()

    def access_changed(self, suspect: str) -> None:
        kind, _, tenant_id = suspect.partition(":")
        if kind == "tenant":
            self._suspects.add(tenant_id)
            self._recheck.set()

    # --- running ------------------------------------------------------------------------------------

    async def run(self) -> None:
        connection = await self._connect()
        try:
            consuming = await connection.channel()
            await consuming.set_qos(prefetch_count=self.prefetch)
            publishing = await connection.channel(publisher_confirms=True)
            self._exchange = await publishing.get_exchange(broker.EXCHANGE)
            await self._bind(consuming)
            self.ready.set()
            logger.info("mqtt: bridge consuming %r from %s", self.queue, _safe(self.url))
            async with asyncio.TaskGroup() as group:
                group.create_task(self._uplinks())
                group.create_task(self._downlinks())
                group.create_task(self._revocations())
        finally:
            self.ready.clear()
            await connection.close()

    async def _connect(self) -> AbstractRobustConnection:
        """The broker, waited for (it may start after us); reconnects on its own afterwards."""
        delay = 0.5
        while True:
            try:
                return await aio_pika.connect_robust(self.url, timeout=10)
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                logger.warning("mqtt: broker at %s not reachable (%s); trying again in %.0f s", _safe(self.url), exc,
                               delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _bind(self, channel: AbstractChannel) -> None:
        exchange = await channel.get_exchange(broker.EXCHANGE)
        queue = await channel.declare_queue(self.queue, durable=True)
        await queue.bind(exchange, routing_key="t.*.d.*.up.#")

        async def arrived(message: AbstractIncomingMessage) -> None:
            await self._inbox.put(message)

        await queue.consume(arrived, no_ack=False)

    # --- uplinks ------------------------------------------------------------------------------------

    async def _uplinks(self) -> None:
        while True:
            batch = [await self._inbox.get()]
            while len(batch) < self.prefetch and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            try:
                await self.handle(batch)
            except Exception:  # never takes the bridge down: the batch goes back to the queue
                logger.exception("mqtt: a batch of %d uplinks failed; returned to the queue", len(batch))
                await asyncio.sleep(RETRY_SECONDS)
                for message in batch:
                    await _settle(message, requeue=True)

    async def handle(self, batch: list[AbstractIncomingMessage]) -> None:
        """Read, group by device, store; acknowledge what was stored or refused."""
        now = datetime.now(UTC)
        groups: dict[tuple[str, int], list[tuple[AbstractIncomingMessage, messages.Uplink]]] = defaultdict(list)
        for message in batch:
            found = broker.uplink_of(message.routing_key or "")
            if found is None:  # not a device's uplink (something else bound to the queue)
                logger.warning("mqtt: dropped a message on %r: not a device uplink topic", message.routing_key)
                self.platform.metrics.mqtt_messages.labels("invalid").inc()
                await _settle(message)
                continue
            tenant_id, device_id, kind, operation = found
            try:
                uplink = messages.parse(kind, ids.encode("Device", tenant_id, device_id), message.body, now, operation)
            except AppError as exc:
                await self._refuse(message, tenant_id, device_id, exc, "invalid")
                continue
            groups[(tenant_id, device_id)].append((message, uplink))
        for (tenant_id, device_id), group in groups.items():
            await self._store_group(tenant_id, device_id, group)

    async def _store_group(self, tenant_id: str, device_id: int,
                           group: list[tuple[AbstractIncomingMessage, messages.Uplink]]) -> None:
        try:
            await self._store(tenant_id, device_id, [u for _, u in group])
        except AppError as exc:
            if len(group) > 1:  # one message spoiled the batch: each on its own, to tell which
                for item in group:
                    await self._store_group(tenant_id, device_id, [item])
                return
            await self._refuse(group[0][0], tenant_id, device_id, exc, "refused")
            return
        self.platform.metrics.mqtt_messages.labels("stored").inc(len(group))
        for message, _ in group:
            await _settle(message)

    async def _store(self, tenant_id: str, device_id: int, batch: list[messages.Uplink]) -> None:
        access = self.platform.gate.broker_device(tenant_id, device_id)
        committed = False
        try:
            routed = await access.routed()
            plane = data_plane.Plane(db=await access.tenant_db(), management=access.management_db, routed=routed,
                                     warning_ratio=self.platform.settings.limit_warning_ratio)
            await uplinks.apply(plane, ids.encode("Device", tenant_id, device_id), batch)
            await access.finish(commit=True)
            committed = True
        finally:
            if not committed:
                await access.finish(commit=False)
        if self.platform.settings.metering:
            self.platform.meter.add(tenant_id, {"request_count": len(batch), "device_request_count": len(batch),
                                                **plane.usage})

    async def _refuse(self, message: AbstractIncomingMessage, tenant_id: str, device_id: int, exc: AppError,
                      outcome: str) -> None:
        """Counted, logged with the device, answered on its error topic, then acknowledged."""
        self.platform.metrics.mqtt_messages.labels(outcome).inc()
        topic = broker.mqtt_topic(message.routing_key or "")
        logger.info("mqtt: %s refused from %s: %s %s", topic, ids.encode("Device", tenant_id, device_id), exc.code,
                    exc.message)
        body = {"topic": topic, "code": exc.code, "message": exc.message, **exc.extensions}
        with contextlib.suppress(Exception):  # the answer is best effort; the refusal stands
            await self.publish(broker.downlink(tenant_id, device_id, "errors"), orjson.dumps(body))
        await _settle(message)

    async def publish(self, routing_key: str, body: bytes) -> None:
        assert self._exchange is not None
        await self._exchange.publish(
            aio_pika.Message(body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key, mandatory=False)

    # --- downlinks ----------------------------------------------------------------------------------

    async def _downlinks(self) -> None:
        loop = asyncio.get_running_loop()
        swept = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 2.0)
            self._wake.clear()
            due, self._dirty = self._dirty, set()
            try:
                if loop.time() - swept > SWEEP_SECONDS or not self._tenants:
                    self._tenants, swept = await self._registered(), loop.time()
                    due |= self._tenants
                for tenant_id in due:
                    while await self.push(tenant_id):
                        pass
            except Exception:
                logger.exception("mqtt: pushing operations failed; trying again")
                self._dirty |= due

    async def _registered(self) -> set[str]:
        tx = management_transaction(self.platform.db.app)
        try:
            return await downlinks.tenants(tx)
        finally:
            await tx.finish(commit=False)

    async def push(self, tenant_id: str) -> bool:
        """Publish the tenant's next operations (one lease); whether a full batch went out."""
        engine = self.platform.db.app
        tx = management_transaction(engine)
        committed = False
        try:
            position = await downlinks.lease(tx, tenant_id)
            if position is None:
                return False
            reader = tenant_transaction(engine, tenant_id)
            try:
                changes, upto = await downlinks.pending(reader, tenant_id, position)
            finally:
                await reader.finish(commit=False)
            for change in changes:
                body = downlinks.message(change)
                if body is not None and change.device_id is not None:
                    await self.publish(broker.downlink(tenant_id, change.device_id, "down", "operations"), body)
            if upto > position:
                await downlinks.advance(tx, tenant_id, upto)
            await tx.finish(commit=True)
            committed = True
            return len(changes) == downlinks.BATCH
        finally:
            if not committed:
                await tx.finish(commit=False)

    # --- revocations --------------------------------------------------------------------------------

    async def _revocations(self) -> None:
        if self.management_url is None:
            logger.warning("mqtt: TENANTRY_MQTT_MANAGEMENT_URL is not set: devices whose tokens are revoked "
                           "stay connected until they reconnect")
            return
        parts = urlsplit(self.management_url)
        base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}{parts.path.rstrip('/')}"
        auth = (parts.username or "guest", parts.password or "guest")
        loop = asyncio.get_running_loop()
        hot: dict[str, float] = {}  # tenants checked again for a while: the broker lists connections late
        swept = loop.time()
        async with httpx2.AsyncClient(base_url=base, auth=auth, timeout=10, trust_env=False) as client:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._recheck.wait(), RECHECK_SECONDS)
                self._recheck.clear()
                now = loop.time()
                hot.update(dict.fromkeys(self._suspects, now + HOT_SECONDS))
                self._suspects = set()
                hot = {tenant: until for tenant, until in hot.items() if until > now}
                sweep = now - swept > SWEEP_SECONDS
                if not hot and not sweep:
                    continue
                try:
                    await self.disconnect_revoked(client, None if sweep else set(hot))
                    swept = now if sweep else swept
                except Exception:
                    logger.exception("mqtt: checking connected devices failed")

    async def disconnect_revoked(self, client: httpx2.AsyncClient, tenants: set[str] | None) -> int:
        """Close the connections of devices (of `tenants`, or all) that may not stay; how many."""
        answer = await client.get("/api/connections", params={"columns": "name,user"})
        answer.raise_for_status()
        closed = 0
        for connection in answer.json():
            device = broker.device_of_username(str(connection.get("user", "")), None)
            if device is None or (tenants is not None and device[0] not in tenants):
                continue
            if await self.platform.gate.device_connected(*device):
                continue
            name = str(connection["name"])
            gone = await client.delete(f"/api/connections/{quote(name, safe='')}",
                                       headers={"X-Reason": "device credentials revoked"})
            if gone.status_code in (204, 404):
                closed += 1
                logger.info("mqtt: disconnected %s: its credentials were revoked", connection.get("user"))
        return closed


async def ensure_downlink(platform: Platform, tenant_id: str, known: set[str]) -> None:
    """A tenant whose device just logged in gets a downlink position (once; `known` caches it)."""
    if tenant_id in known:
        return
    engine = platform.db.app
    reader, tx = tenant_transaction(engine, tenant_id), management_transaction(engine)
    try:
        await downlinks.register(tx, reader, tenant_id)
        await tx.finish(commit=True)
        known.add(tenant_id)
    finally:
        await reader.finish(commit=False)
        if tenant_id not in known:
            await tx.finish(commit=False)


async def _settle(message: AbstractIncomingMessage, *, requeue: bool = False) -> None:
    """Acknowledge (or return) a message; one from a channel that since reconnected is redelivered anyway."""
    with contextlib.suppress(Exception):
        if requeue:
            await message.nack(requeue=True)
        else:
            await message.ack()


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
