"""Webhooks: a tenant's HTTP endpoints that receive its changes, from its change log, in order per
endpoint, at least once, signed as Standard Webhooks (https://www.standardwebhooks.com).

- `webhook-id` is the change's position (`<tenant>:<n>`): the same for every retry and
  redelivery, so receivers dedupe by it; `webhook-timestamp` is the send time (seconds);
  `webhook-signature` is `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` keyed by the
  endpoint's secret (`whsec_<base64 key>`, shown once, sealed at rest as tenant credentials are).
- Outbound requests reach only public addresses unless the operator allows a network
  (TENANTRY_WEBHOOK_ALLOWED_NETWORKS): every address the name resolves to is checked, and the
  request goes to the checked address (no second lookup a DNS rebinding could change). Timeouts
  apply, redirects are not followed, and at most RESPONSE_BYTES of an answer are read.
- Delivery (app.realtime.webhooks) retries a failing endpoint with exponential backoff and
  jitter; failing for `webhook_retry_hours` it is disabled, with an audit record.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx2
import orjson
from sqlalchemy import delete, func, insert, select

from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.auth.secrets_box import SecretBox
from app.db.transaction import Executor
from app.errors import InvalidInput, LimitExceeded, NotFound
from app.models.management import webhook_deliveries, webhooks
from app.services.audit import records
from app.services.changes import log

RESPONSE_BYTES = 64 * 1024
URL_CHARS = 2048

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def webhook_box(secret_key: str) -> SecretBox:
    return SecretBox(secret_key, b"tenantry-webhook-secret")


@dataclass(frozen=True)
class Webhook:
    id: UUID
    tenant_id: str
    url: str
    kinds: tuple[str, ...]
    description: str | None
    enabled: bool
    position: int
    attempts: int
    disabled_reason: str | None
    created_at: datetime


@dataclass(frozen=True)
class Delivery:
    id: int
    webhook_id: UUID
    message_id: str
    position: int
    kind: str
    status: str
    http_status: int | None
    attempt: int
    latency_ms: float | None
    error: str | None
    redelivery: bool
    at: datetime


COLUMNS = (webhooks.c.id, webhooks.c.tenant_id, webhooks.c.url, webhooks.c.kinds, webhooks.c.description,
           webhooks.c.enabled, webhooks.c.position, webhooks.c.attempts, webhooks.c.disabled_reason,
           webhooks.c.created_at)


def _webhook(row: Any) -> Webhook:
    return Webhook(row.id, row.tenant_id, row.url, tuple(row.kinds), row.description, row.enabled, row.position,
                   row.attempts, row.disabled_reason, row.created_at)


# --- where requests may go -------------------------------------------------------------------------

@dataclass(frozen=True)
class Outbound:
    """The operator's rule for outbound requests: public addresses, plus the networks allowed."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def of(cls, networks: Sequence[str]) -> Outbound:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def refusal(self, address: Address) -> str | None:
        """Why a request may not go to `address`, or None."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed):
            return None
        for rule, hit in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                          ("private", address.is_private), ("multicast", address.is_multicast),
                          ("reserved", address.is_reserved or address.is_unspecified)):
            if hit:
                return (f"{address} is a {rule} address: webhooks reach only public addresses unless the operator "
                        "allows its network (TENANTRY_WEBHOOK_ALLOWED_NETWORKS)")
        return None

    async def resolve(self, url: str) -> tuple[str, Address]:
        """The URL's host and the address to send to, every address it resolves to checked."""
        host, port = checked_url(url)
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
            addresses: list[Address] = [literal]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, proto=6)
            except OSError as exc:
                raise InvalidInput(f"the webhook's host {host!r} does not resolve ({exc})", field="url") from None
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                raise InvalidInput(why, field="url", rule="webhookAllowedNetworks")
        return host, addresses[0]


def checked_url(url: str) -> tuple[str, int]:
    if len(url) > URL_CHARS:
        raise InvalidInput(f"a webhook URL has at most {URL_CHARS} characters", field="url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("a webhook URL is http:// or https:// with a host", field="url")
    if parts.username or parts.password:
        raise InvalidInput("a webhook URL carries no credentials (the signature authenticates us)", field="url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidInput("the webhook URL's port is not a number from 1 to 65535", field="url") from None
    return parts.hostname, port


# --- managing endpoints ----------------------------------------------------------------------------

async def create(db: Executor, management: Executor, routed: Routed, box: SecretBox, outbound: Outbound, *,
                 url: str, kinds: Sequence[str], description: str | None, cap: int) -> tuple[Webhook, str]:
    """An endpoint that hears changes committed from now on; its secret, shown once."""
    routed.require(TENANT_ADMIN)
    if not kinds:
        raise InvalidInput("name at least one change type", field="types")
    wanted = log.readable_kinds(routed, kinds)
    if description is not None and len(description) > 500:
        raise InvalidInput("a description has at most 500 characters", field="description")
    await outbound.resolve(url)
    count = (await management.execute(select(func.count()).select_from(webhooks)
                                      .where(webhooks.c.tenant_id == routed.tenant.id))).scalar_one()
    if count >= cap:
        raise LimitExceeded(f"at most {cap} webhooks per tenant", limit="webhooksPerTenant", max=cap)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    start = (await log.head(db)).last
    row = (await management.execute(insert(webhooks).values(
        tenant_id=routed.tenant.id, url=url, kinds=wanted, description=description, secret=box.seal(secret),
        position=start, created_by=f"{routed.actor.type}:{routed.actor.id}").returning(*COLUMNS))).one()
    await records.record(management, tenant_id=routed.tenant.id, actor=routed.actor, action="webhook.created",
                         target=str(row.id), changes=[{"attribute": "url", "previous": None, "new": url}])
    return _webhook(row), secret


async def listed(management: Executor, routed: Routed) -> list[Webhook]:
    routed.require(TENANT_ADMIN)
    rows = (await management.execute(select(*COLUMNS).where(webhooks.c.tenant_id == routed.tenant.id)
                                     .order_by(webhooks.c.created_at))).all()
    return [_webhook(r) for r in rows]


async def find(management: Executor, routed: Routed, webhook_id: str) -> Webhook:
    routed.require(TENANT_ADMIN)
    try:
        key = UUID(webhook_id)
    except ValueError:
        raise InvalidInput("not a webhook id", field="id") from None
    row = (await management.execute(select(*COLUMNS).where(webhooks.c.id == key,
                                                           webhooks.c.tenant_id == routed.tenant.id))).first()
    if row is None:
        raise NotFound(f"webhook {webhook_id} not found")
    return _webhook(row)


async def remove(management: Executor, routed: Routed, webhook_id: str) -> bool:
    hook = await find(management, routed, webhook_id)
    await management.execute(delete(webhooks).where(webhooks.c.id == hook.id))
    await records.record(management, tenant_id=routed.tenant.id, actor=routed.actor, action="webhook.deleted",
                         target=str(hook.id))
    return True


DELIVERY_COLUMNS = tuple(webhook_deliveries.c)


async def deliveries(management: Executor, webhook_ids: Sequence[UUID], first: int) -> dict[UUID, list[Delivery]]:
    """The newest `first` deliveries of each endpoint."""
    ranked = (select(*DELIVERY_COLUMNS, func.row_number().over(partition_by=webhook_deliveries.c.webhook_id,
                                                                order_by=webhook_deliveries.c.id.desc()).label("n"))
              .where(webhook_deliveries.c.webhook_id.in_(list(webhook_ids))).subquery())
    rows = (await management.execute(select(*[ranked.c[c.name] for c in DELIVERY_COLUMNS])
                                     .where(ranked.c.n <= first).order_by(ranked.c.id.desc()))).all()
    out: dict[UUID, list[Delivery]] = {i: [] for i in webhook_ids}
    for r in rows:
        out[r.webhook_id].append(Delivery(*tuple(r)))
    return out


async def delivery(management: Executor, routed: Routed, delivery_id: str) -> tuple[Webhook, Delivery]:
    if not re.fullmatch(r"[0-9]{1,19}", delivery_id) or not 0 < int(delivery_id) < 2**63:
        raise InvalidInput("not a webhook delivery id", field="deliveryId")
    key = int(delivery_id)
    row = (await management.execute(select(*DELIVERY_COLUMNS).where(webhook_deliveries.c.id == key))).first()
    if row is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    found = Delivery(*tuple(row))
    rows = (await management.execute(select(*COLUMNS).where(webhooks.c.id == found.webhook_id,
                                                            webhooks.c.tenant_id == routed.tenant.id))).first()
    if rows is None:  # another tenant's: it does not exist here
        raise NotFound(f"webhook delivery {delivery_id} not found")
    routed.require(TENANT_ADMIN)
    return _webhook(rows), found


# --- sending ---------------------------------------------------------------------------------------

def message(change: log.Change) -> bytes:
    """The request body: the change as the `changes` query shows it."""
    return orjson.dumps({"type": log.KINDS[change.kind], "position": change.key, "op": change.op,
                         "at": change.at.isoformat(), "data": log.public(change)})


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass(frozen=True)
class Outcome:
    ok: bool
    http_status: int | None
    latency_ms: float
    error: str | None


async def send(client: httpx2.AsyncClient, outbound: Outbound, url: str, secret: str, change: log.Change,
               timeout_seconds: float) -> Outcome:
    """POST one change to `url`, to the address its host resolves to (checked), signed."""
    started = time.perf_counter()
    try:
        host, address = await outbound.resolve(url)
    except InvalidInput as exc:
        return Outcome(False, None, 0.0, exc.message)
    body = message(change)
    timestamp = int(time.time())
    parts = urlsplit(url)
    netloc = f"[{address}]" if address.version == 6 else str(address)
    if parts.port:
        netloc += f":{parts.port}"
    target = parts._replace(netloc=netloc).geturl()
    headers = {"content-type": "application/json", "host": parts.netloc, "user-agent": "Tenantry-Webhooks/1",
               "webhook-id": change.key, "webhook-timestamp": str(timestamp),
               "webhook-signature": signature(secret, change.key, timestamp, body)}
    try:
        async with client.stream("POST", target, content=body, headers=headers, timeout=timeout_seconds,
                                 extensions={"sni_hostname": host}) as answer:
            read = 0
            async for chunk in answer.aiter_bytes():
                read += len(chunk)
                if read >= RESPONSE_BYTES:
                    break
            status = answer.status_code
    except httpx2.HTTPError as exc:
        return Outcome(False, None, (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}"[:500])
    latency = (time.perf_counter() - started) * 1000
    ok = 200 <= status < 300
    return Outcome(ok, status, latency, None if ok else f"the endpoint answered HTTP {status}")


def delivery_row(hook: Webhook, change: log.Change, outcome: Outcome, *, attempt: int,
                 redelivery: bool = False) -> dict[str, Any]:
    return {"webhook_id": hook.id, "message_id": change.key, "position": change.position, "kind": change.kind,
            "status": "SUCCEEDED" if outcome.ok else "FAILED", "http_status": outcome.http_status,
            "attempt": attempt, "latency_ms": outcome.latency_ms, "error": outcome.error, "redelivery": redelivery}


async def record(management: Executor, hook: Webhook, change: log.Change, outcome: Outcome, *, attempt: int,
                 redelivery: bool = False) -> Delivery:
    row = (await management.execute(insert(webhook_deliveries).values(
        delivery_row(hook, change, outcome, attempt=attempt, redelivery=redelivery))
        .returning(*DELIVERY_COLUMNS))).one()
    return Delivery(*tuple(row))


async def record_all(management: Executor, rows: list[dict[str, Any]]) -> None:
    """A batch's delivery log in one statement (a round trip per delivery halved the rate at 1,000/s)."""
    if rows:
        await management.execute(insert(webhook_deliveries), rows)


async def redeliver(db: Executor, management: Executor, box: SecretBox, outbound: Outbound,
                    timeout_seconds: float, hook: Webhook, delivery: Delivery) -> Delivery:
    """Send one logged change to its endpoint again, now (its position does not move)."""
    found = await log.read(db, hook.tenant_id, after=delivery.position - 1, limit=1, upto=delivery.position)
    if not found:
        raise InvalidInput("this change is no longer in the tenant's log (retention)", field="deliveryId")
    secret = (await management.execute(select(webhooks.c.secret).where(webhooks.c.id == hook.id))).scalar_one()
    async with httpx2.AsyncClient(follow_redirects=False, trust_env=False) as client:
        outcome = await send(client, outbound, hook.url, box.open(secret), found[0], timeout_seconds)
    return await record(management, hook, found[0], outcome, attempt=1, redelivery=True)
