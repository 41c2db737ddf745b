"""The MQTT broker's HTTP hooks, in the two shapes brokers speak:

- EMQX's HTTP authenticator and authorizer: `POST /mqtt/auth` with JSON `{username, password,
  clientid}` and `POST /mqtt/acl` with `{username, clientid, topic, action: publish|subscribe}`,
  answered `{"result": "allow" | "deny"}`;
- RabbitMQ's `rabbitmq_auth_backend_http`: `POST /mqtt/auth/{user,vhost,resource,topic}` with
  form fields, answered `allow` or `deny` (the broker CI runs).

Every answer is
the access gate's (app.access.gate / app.access.broker). Only the broker calls these: callers
outside TENANTRY_MQTT_HOOK_NETWORKS (default loopback) get 403, so they cannot be used to try
device tokens from outside. A hook that fails answers `deny` (the broker refuses, the device
retries), never an error page the broker might read as something else.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from app.access import broker
from app.realtime.mqtt import ensure_downlink
from app.runtime.platform import Platform

logger = logging.getLogger("tenantry.mqtt")
MAX_HOOK_BODY = 8192  # a hook's form is a few short fields; a device token is under 100 characters


class BrokerHooks:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        settings = platform.settings
        self.virtual_host = settings.mqtt_vhost
        self.networks = [ipaddress.ip_network(n, strict=False) for n in settings.mqtt_hook_networks]
        self._downlinked: set[str] = set()  # tenants known to have a downlink position

    # --- EMQX ---------------------------------------------------------------------------------------

    async def authenticate(self, request: Request) -> Response:
        fields = await self._json(request)
        if fields is None:
            return _result(False, 403)
        return _result(await self._login(str(fields.get("username") or ""), str(fields.get("password") or ""),
                                         str(fields.get("clientid") or "") or None))

    async def authorize(self, request: Request) -> Response:
        fields = await self._json(request)
        if fields is None:
            return _result(False, 403)
        permission = {"publish": "write", "subscribe": "read"}.get(str(fields.get("action")), "")
        return _result(self._topic(str(fields.get("username") or ""), str(fields.get("clientid") or "") or None,
                                   broker.topic_levels(str(fields.get("topic") or "")), permission))

    # --- RabbitMQ -----------------------------------------------------------------------------------

    async def user(self, request: Request) -> Response:
        form = await self._form(request)
        if form is None:
            return _refused()
        return _answer(await self._login(form.get("username", ""), form.get("password", ""), form.get("client_id")))

    async def vhost(self, request: Request) -> Response:
        form = await self._form(request)
        if form is None:
            return _refused()
        return _answer(broker.vhost_allowed(
            form.get("username", ""), form.get("client_id"), form.get("vhost", ""), self.virtual_host))

    async def resource(self, request: Request) -> Response:
        form = await self._form(request)
        if form is None:
            return _refused()
        return _answer(broker.resource_allowed(
            form.get("username", ""), form.get("client_id"), form.get("resource", ""), form.get("name", ""),
            form.get("permission", "")))

    async def topic(self, request: Request) -> Response:
        form = await self._form(request)
        if form is None:
            return _refused()
        return _answer(form.get("name") == broker.EXCHANGE and self._topic(
            form.get("username", ""), form.get("client_id") or form.get("variable_map.client_id"),
            broker.routing_levels(form.get("routing_key", "")), form.get("permission", "")))

    # --- the gate's answers -------------------------------------------------------------------------

    async def _login(self, username: str, password: str, client_id: str | None) -> bool:
        try:
            allowed = await self.platform.gate.broker_login(username, password, client_id)
            device = broker.device_of_username(username, None)
            if allowed and device is not None:  # its operations are pushed from now on
                await ensure_downlink(self.platform, device[0], self._downlinked)
        except Exception:  # the database is away: the device is refused now and retries
            logger.exception("mqtt: checking a device login failed")
            allowed = False
        if not allowed:
            logger.info("mqtt: login refused for %r", username[:80])
        return allowed

    def _topic(self, username: str, client_id: str | None, levels: list[str], permission: str) -> bool:
        allowed = broker.topic_allowed(username, client_id, levels, permission)
        if not allowed:
            logger.info("mqtt: %s on %r refused for %r", permission or "?", "/".join(levels)[:200], username[:80])
        return allowed

    async def _body(self, request: Request) -> bytes | None:
        """The hook's body, or None when the caller is not the broker (or sent too much)."""
        host = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        if not any(address in network for network in self.networks):
            return None
        body = await request.body()
        return body if len(body) <= MAX_HOOK_BODY else None

    async def _form(self, request: Request) -> dict[str, str] | None:
        body = await self._body(request)
        if body is None:
            return None
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in fields.items() if v}

    async def _json(self, request: Request) -> dict[str, Any] | None:
        body = await self._body(request)
        try:
            fields = orjson.loads(body) if body is not None else None
        except orjson.JSONDecodeError:
            return {}
        return fields if isinstance(fields, dict) or fields is None else {}


def _answer(allowed: bool) -> Response:
    return PlainTextResponse("allow" if allowed else "deny")


def _result(allowed: bool, status: int = 200) -> Response:
    return JSONResponse({"result": "allow" if allowed else "deny"}, status_code=status)


def _refused() -> Response:
    return PlainTextResponse("deny", status_code=403)
