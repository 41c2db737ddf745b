"""The change log's readers are woken after COMMIT by the process's waker (app.db.wakes): requests'
commits no longer NOTIFY, so they no longer wait on one another at COMMIT whatever their tenant; a
lost wake-up delays readers and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from app.db.notify import CHANGES
from app.db.wakes import Waker
from app.realtime.hub import SWEEP_SECONDS, Hub
from app.runtime.platform import Platform
from tests.conftest import Api, World
from tests.test_realtime import ALARMS, RAISE, Raw, _device, _listening

CREATE = 'mutation { createDevice(input: {name: "w", type: "meter"}) { id } }'


@contextlib.asynccontextmanager
async def _listener(platform: Platform) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    url = platform.db.owner.url.set(drivername="postgresql").render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANGES}")
        yield conn


async def _heard(conn: psycopg.AsyncConnection[tuple[object, ...]], tenants: Iterable[str],
                 wait: float = 10) -> dict[str, set[int]]:
    """Per tenant, the backends whose NOTIFY named it, once every one of `tenants` was heard."""
    wanted, heard = set(tenants), dict[str, set[int]]()

    async def listen() -> None:
        async for note in conn.notifies():
            if note.payload in wanted:
                heard.setdefault(note.payload, set()).add(note.pid)
                if set(heard) == wanted:
                    return
    await asyncio.wait_for(listen(), wait)
    return heard


async def test_requests_commits_are_woken_by_the_waker_not_by_their_own_notify(
        api: Api, world: World, platform: Platform) -> None:
    """40 concurrent writes in four tenants commit on several pooled connections; every wake-up
    comes from the waker's one connection, none from a request's COMMIT."""
    tenants = [await world.tenant() for _ in range(4)]
    async with _listener(platform) as conn:
        answers = await asyncio.gather(*(api.gql(CREATE, token=t.token, tenant=t.id) for t in tenants * 10))
        assert all(answer.errors == [] for answer in answers)
        heard = await _heard(conn, (t.id for t in tenants))
        await platform.waker.flushed()
    waker = platform.waker._conn
    assert waker is not None
    assert set().union(*heard.values()) == {waker.info.backend_pid}


async def test_a_wake_up_survives_its_connection_being_cut(platform: Platform) -> None:
    """The waker's connection terminated by an operator: the next wake-up reconnects and is heard."""
    waker = platform.waker
    waker.wake(["warm-up"])
    await waker.flushed()
    assert waker._conn is not None
    async with platform.db.owner.connect() as owner:
        await owner.execute(text("SELECT pg_terminate_backend(:p)"), {"p": waker._conn.info.backend_pid})
    async with _listener(platform) as conn:
        waker.wake(["after-the-cut"])
        assert set(await _heard(conn, ["after-the-cut"])) == {"after-the-cut"}


async def test_closing_sends_what_is_pending(platform: Platform) -> None:
    """A process shutting down wakes the readers of what it committed last before it goes."""
    waker = Waker(platform.db.app)
    async with _listener(platform) as conn:
        waker.wake(["closing-a", "closing-b"])
        await waker.close()
        assert set(await _heard(conn, ["closing-a", "closing-b"])) == {"closing-a", "closing-b"}
    assert waker._conn is None


class _Dropped:
    """A waker whose process died between COMMIT and its NOTIFY: nothing is sent."""

    @contextlib.asynccontextmanager
    async def committing(self, driver: object, tenants: Iterable[str]) -> AsyncIterator[list[tuple[str, bool]]]:
        yield []  # its COMMIT flushed as it commits; then nothing is sent


async def test_a_wake_up_lost_with_its_process_still_reaches_subscribers(
        server: str, api: Api, world: World, hub: Hub, platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY ever comes for this alarm; the hub's sweep reads the tenant's log all the same, on
    time even while another tenant's writes wake the hub again and again."""
    tenant, busy = await world.tenant(), await world.tenant()
    device, busy_device = await _device(api, tenant), await _device(api, busy)
    async with Raw.connect(server, {"Authorization": f"Bearer {tenant.token}", "X-Tenant-ID": tenant.id}) as raw, \
            Raw.connect(server, {"Authorization": f"Bearer {busy.token}", "X-Tenant-ID": busy.id}) as other:
        for ws in (raw, other):
            assert (await ws.receive())["type"] == "connection_ack"
        before = hub.subscription_count
        for ws in (raw, other):
            await ws.send({"id": "1", "type": "subscribe", "payload": {"query": ALARMS}})
        await _listening(hub, before + 2)
        monkeypatch.setattr(platform.gate, "waker", _Dropped())
        raised = await api.gql(RAISE, {"d": device, "t": "unannounced"}, token=tenant.token, tenant=tenant.id)
        assert raised.errors == []
        monkeypatch.undo()

        async def keep_busy() -> None:
            for n in itertools.count():  # until the event came
                await api.gql(RAISE, {"d": busy_device, "t": f"busy-{n}"}, token=busy.token, tenant=busy.id)
                await asyncio.sleep(0.25)

        async def unannounced() -> dict[str, Any]:
            while (event := await raw.receive(wait=30))["type"] == "ping":  # the protocol's keep-alive
                pass
            return event

        busy_writes = asyncio.create_task(keep_busy())
        try:  # a sweep is due every SWEEP_SECONDS, whatever else wakes the hub
            event = await asyncio.wait_for(unannounced(), 2 * SWEEP_SECONDS + 2)
        finally:
            busy_writes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy_writes
        assert event["payload"]["data"]["alarms"]["alarm"]["type"] == "unannounced"
