"""Webhooks from the change log, to a real HTTP receiver on loopback: Standard Webhooks signatures,
order and at-least-once with retries (the same webhook-id again), disabling after the retry window,
outbound rules (SSRF) checked after DNS resolution, limits, redelivery, and isolation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import uvicorn

from app.errors import InvalidInput
from app.realtime import webhooks as dispatch
from app.realtime.hub import Hub
from app.runtime.platform import Platform
from app.services.changes.webhooks import Outbound, webhook_box
from tests.conftest import Api, TenantHandle, World
from tests.test_realtime import RAISE, _device

CREATE = """mutation($u: String!, $t: [ChangeType!]!) { createWebhook(input: {url: $u, types: $t}) {
  secret webhook { id url types enabled } } }"""
HOOKS = "{ webhooks { id enabled disabledReason position deliveries(first: 50) { id messageId status attempt " \
        "httpStatus } } }"


class Receiver:
    """A real HTTP endpoint: records each request; answers `fail` 500s first."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail = 0
        self.arrived = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((headers, body))
        self.arrived.set()
        status = 500 if self.fail > 0 else 204
        self.fail -= 1
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def ids(self) -> list[str]:
        return [h["webhook-id"] for h, _ in self.requests]


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(receiver, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):  # uvicorn offers no event for it
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield receiver, f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def dispatching(platform: Platform, hub: Hub) -> AsyncIterator[dispatch.Dispatcher]:
    s = platform.settings
    dispatcher = dispatch.Dispatcher(engine=platform.db.app, box=webhook_box(s.resolved_secret_key()),
                                     outbound=Outbound.of(s.webhook_allowed_networks), timeout=5.0, retry_hours=24)
    hub.on_change.append(dispatcher.wake)
    hub.start()
    task = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        hub.on_change.remove(dispatcher.wake)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _wait(condition: Any, seconds: float = 15) -> None:
    for _ in range(int(seconds * 50)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec, not from the server's code."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(part.split(",", 1)[1] == expected for part in headers["webhook-signature"].split())


async def _hook(api: Api, tenant: TenantHandle, url: str, types: list[str]) -> Any:
    return await api.gql(CREATE, {"u": url, "t": types}, token=tenant.token, tenant=tenant.id)


async def test_changes_arrive_signed_in_order_and_a_failure_is_retried_with_the_same_id(
        api: Api, world: World, platform: Platform, hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "BACKOFF_BASE_SECONDS", 0.05)
    tenant = await world.tenant()
    device = await _device(api, tenant)
    async with receiving() as (receiver, url), dispatching(platform, hub):
        created = (await _hook(api, tenant, url, ["ALARM"])).data["createWebhook"]
        secret = created["secret"]
        assert secret.startswith("whsec_")
        receiver.fail = 2  # the first change is refused twice, then taken
        for n in range(5):
            await api.gql(RAISE, {"d": device, "t": f"a{n}"}, token=tenant.token, tenant=tenant.id)
        await _wait(lambda: len(set(receiver.ids())) == 5)
        listed = (await api.gql(HOOKS, token=tenant.token, tenant=tenant.id)).data["webhooks"][0]
        again = await api.gql("mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { status redelivery messageId } }",
                              {"d": listed["deliveries"][0]["id"]}, token=tenant.token, tenant=tenant.id)
        assert again.data["redeliverWebhook"] == {"status": "SUCCEEDED", "redelivery": True,
                                                  "messageId": receiver.ids()[-1]}
    ids = receiver.ids()[:-1]
    assert ids[0] == ids[1] == ids[2]  # retried with the same webhook-id: receivers dedupe by it
    unique = list(dict.fromkeys(ids))
    assert [int(i.rsplit(":", 1)[1]) for i in unique] == sorted(int(i.rsplit(":", 1)[1]) for i in unique)
    bodies = [orjson.loads(b) for _, b in receiver.requests[2:-1]]
    assert [b["data"]["type"] for b in bodies] == [f"a{n}" for n in range(5)]
    assert all(b["type"] == "ALARM" and b["data"]["deviceId"] == device for b in bodies)
    assert all(_verify(secret, h, b) for h, b in receiver.requests)
    statuses = [(d["status"], d["attempt"]) for d in reversed(listed["deliveries"])]
    assert statuses[:3] == [("FAILED", 1), ("FAILED", 2), ("SUCCEEDED", 3)]
    assert listed["position"] == unique[-1]
    other = await world.tenant()
    assert (await api.gql(HOOKS, token=other.token, tenant=other.id)).data["webhooks"] == []
    foreign = await api.gql("mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { status } }",
                            {"d": listed["deliveries"][0]["id"]}, token=other.token, tenant=other.id)
    assert foreign.errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_an_endpoint_failing_past_the_retry_window_is_disabled_and_audited(
        api: Api, world: World, platform: Platform, hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "BACKOFF_BASE_SECONDS", 0.05)
    tenant = await world.tenant()
    device = await _device(api, tenant)
    async with receiving() as (receiver, url), dispatching(platform, hub) as dispatcher:
        dispatcher.retry_hours = 0.0
        await _hook(api, tenant, url, ["ALARM"])
        receiver.fail = 1000
        await api.gql(RAISE, {"d": device, "t": "x"}, token=tenant.token, tenant=tenant.id)

        async def disabled() -> bool:
            hooks = (await api.gql(HOOKS, token=tenant.token, tenant=tenant.id)).data["webhooks"]
            return not hooks[0]["enabled"]

        for _ in range(300):
            if await disabled():
                break
            await asyncio.sleep(0.05)
    hooks = (await api.gql(HOOKS, token=tenant.token, tenant=tenant.id)).data["webhooks"]
    assert not hooks[0]["enabled"]
    assert "HTTP 500" in hooks[0]["disabledReason"]
    audit = await api.gql('{ auditLog(filter: {action: "webhook."}) { edges { node { action } } } }',
                          token=tenant.token, tenant=tenant.id)
    assert "webhook.disabled" in [e["node"]["action"] for e in audit.data["auditLog"]["edges"]]


@pytest.mark.parametrize("url", ["http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data",
                                 "http://[::1]:8080/", "http://192.168.0.1/", "http://0.0.0.0/"])
async def test_webhooks_to_private_loopback_or_link_local_addresses_are_refused(api: Api, world: World,
                                                                               url: str) -> None:
    tenant = await world.tenant()
    refused = await _hook(api, tenant, url, ["ALARM"])
    assert refused.errors[0]["extensions"]["code"] == "INVALID_INPUT"
    assert refused.errors[0]["extensions"]["rule"] == "webhookAllowedNetworks"


async def test_a_name_is_checked_after_it_resolves_and_bad_urls_are_invalid_input(api: Api, world: World) -> None:
    with pytest.raises(InvalidInput, match="loopback"):
        await Outbound.of(()).resolve("http://localhost:9/")  # by name: resolved, then refused
    tenant = await world.tenant()
    for url in ("ftp://example.com/", "http://user:pw@example.com/", "not a url", "http://example.com:99999/"):
        refused = await _hook(api, tenant, url, ["ALARM"])
        assert refused.errors[0]["extensions"]["code"] == "INVALID_INPUT", url
    nothing = await _hook(api, tenant, "http://127.0.0.1:9/", [])
    assert nothing.errors[0]["extensions"]["code"] == "INVALID_INPUT"


async def test_webhooks_per_tenant_are_capped(api: Api, world: World, platform: Platform) -> None:
    tenant = await world.tenant()
    cap = platform.settings.webhooks_per_tenant
    for _ in range(cap):
        assert (await _hook(api, tenant, "http://127.0.0.1:9/", ["ALARM"])).errors == []
    over = await _hook(api, tenant, "http://127.0.0.1:9/", ["ALARM"])
    assert over.errors[0]["extensions"] == {"code": "LIMIT_EXCEEDED", "limit": "webhooksPerTenant", "max": cap}
