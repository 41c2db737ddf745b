"""The change log over GraphQL: reading it (`changes`), named consumers, webhooks
(app.services.changes; delivery by app.realtime.webhooks)."""

from __future__ import annotations

import functools
from datetime import datetime
from enum import Enum
from typing import Annotated

import strawberry

from app.auth.secrets_box import SecretBox
from app.graphql.context import Context
from app.graphql.scalars import JSON, ChangePosition, Long
from app.ids import here
from app.services.changes import consumers, log
from app.services.changes import shares as share_service
from app.services.changes import webhooks as webhook_service
from app.services.inventory.devices import require_id
from app.services.pagination import page_size
from app.settings import Settings

Info = strawberry.Info[Context, None]


@strawberry.enum(description="What a change is about.")
class ChangeType(Enum):
    DEVICE = "DEVICE"
    ALARM = "ALARM"
    EVENT = "EVENT"
    OPERATION = "OPERATION"
    MEASUREMENT_BATCH = "MEASUREMENT_BATCH"
    COPY_JOB = "COPY_JOB"
    TENANT = "TENANT"
    SHARE = "SHARE"


def _kinds(types: list[ChangeType] | None) -> list[str] | None:
    return [log.TYPES[t.value] for t in types] if types is not None else None


def _types(kinds: tuple[str, ...] | list[str]) -> list[ChangeType]:
    return [ChangeType(log.KINDS[k]) for k in kinds]


@strawberry.type(description="One entry of the tenant's change log.")
class Change:
    position: ChangePosition
    type: ChangeType
    op: str = strawberry.field(description="What happened: CREATED, UPDATED, DELETED, RAISED, STATUS_CHANGED, …")
    at: datetime = strawberry.field(description="When the change was committed (its transaction's time).")
    data: JSON = strawberry.field(description="The row as written (global ids), a measurement batch's device, "
                                              "time range and count, or a tenant's / copy job's id.")

    @classmethod
    def of(cls, c: log.Change) -> Change:
        return cls(position=ChangePosition(c.key), type=ChangeType(log.KINDS[c.kind]), op=c.op, at=c.at,
                   data=JSON(log.public(c)))


@strawberry.type
class ChangePageInfo:
    has_next_page: bool
    end_cursor: ChangePosition = strawberry.field(description="Pass as `after` for the next page (or to resume).")


@strawberry.type
class ChangeEdge:
    cursor: ChangePosition
    node: Change


@strawberry.type
class ChangeConnection:
    edges: list[ChangeEdge]
    page_info: ChangePageInfo


@strawberry.type(description="A named, durable reader of the change log: it reads what it has not acknowledged.")
class EventConsumer:
    name: str
    types: list[ChangeType]
    position: ChangePosition = strawberry.field(description="Acknowledged up to here.")
    created_at: datetime
    acknowledged_at: datetime | None
    _record: strawberry.Private[consumers.Consumer]

    @classmethod
    def of(cls, c: consumers.Consumer) -> EventConsumer:
        return cls(name=c.name, types=_types(c.kinds), position=ChangePosition(log.format_position(c.tenant_id,
                   c.position)), created_at=c.created_at, acknowledged_at=c.acknowledged_at, _record=c)

    @strawberry.field(description="Changes of its types committed past its position (not yet acknowledged).")
    async def lag(self, info: Info) -> int:
        return await consumers.lag(await info.context.tenant_db(), self._record)

    @strawberry.field(description="The next changes it has not acknowledged, oldest first.")
    async def changes(self, info: Info, first: int | None = None) -> list[Change]:
        ctx = info.context
        found = await consumers.pending(await ctx.tenant_db(), await ctx.routed(), self._record,
                                        page_size(first, ctx.cap))
        return [Change.of(c) for c in found]


@strawberry.type(description="One try of sending a change to a webhook.")
class WebhookDelivery:
    id: strawberry.ID
    message_id: str = strawberry.field(description="The `webhook-id` header: the change's position.")
    type: ChangeType
    status: str = strawberry.field(description="SUCCEEDED or FAILED")
    http_status: int | None
    attempt: int
    latency_ms: float | None
    error: str | None
    redelivery: bool
    at: datetime

    @classmethod
    def of(cls, d: webhook_service.Delivery) -> WebhookDelivery:
        return cls(id=strawberry.ID(str(d.id)), message_id=d.message_id, type=ChangeType(log.KINDS[d.kind]),
                   status=d.status, http_status=d.http_status, attempt=d.attempt, latency_ms=d.latency_ms,
                   error=d.error, redelivery=d.redelivery, at=d.at)


@strawberry.type(description="An HTTP endpoint that receives the tenant's changes, signed as Standard Webhooks.")
class Webhook:
    id: strawberry.ID
    url: str
    types: list[ChangeType]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    position: ChangePosition = strawberry.field(description="Delivered up to here.")
    failed_attempts: int = strawberry.field(description="Failed tries of the next change (0 when healthy).")
    created_at: datetime
    _record: strawberry.Private[webhook_service.Webhook]

    @classmethod
    def of(cls, w: webhook_service.Webhook) -> Webhook:
        return cls(id=strawberry.ID(str(w.id)), url=w.url, types=_types(w.kinds), description=w.description,
                   enabled=w.enabled, disabled_reason=w.disabled_reason,
                   position=ChangePosition(log.format_position(w.tenant_id, w.position)), failed_attempts=w.attempts,
                   created_at=w.created_at, _record=w)

    @strawberry.field(description="The newest deliveries first.")
    async def deliveries(self, info: Info, first: int | None = None) -> list[WebhookDelivery]:
        ctx = info.context
        found = await webhook_service.deliveries(ctx.management_db, [self._record.id], page_size(first,
                                                                                                   ctx.cap))
        return [WebhookDelivery.of(d) for d in found[self._record.id]]


@strawberry.type
class WebhookCreated:
    webhook: Webhook
    secret: str = strawberry.field(description="`whsec_…`: verify signatures with it. Shown once.")


@strawberry.input
class EventConsumerInput:
    name: str
    types: list[ChangeType] | None = strawberry.field(default=None, description="Null: every type you may read.")


@strawberry.input
class WebhookInput:
    url: str
    types: list[ChangeType]
    description: str | None = None


@functools.cache
def _box(secret: str) -> SecretBox:
    return webhook_service.webhook_box(secret)


@functools.cache
def _outbound(networks: tuple[str, ...]) -> webhook_service.Outbound:
    return webhook_service.Outbound.of(networks)


def outbound(settings: Settings) -> webhook_service.Outbound:
    return _outbound(settings.webhook_allowed_networks)


AFTER = strawberry.argument(description="Read just after this position; null: from the oldest kept.")


@strawberry.type
class ChangeQueries:
    @strawberry.field(description="The routed tenant's change log, oldest first, filtered by your rights at read time.")
    async def changes(self, info: Info, after: Annotated[ChangePosition | None, AFTER] = None, first: int | None = None,
                      types: list[ChangeType] | None = None) -> ChangeConnection:
        ctx = info.context
        routed = await ctx.routed()
        kinds = log.readable_kinds(routed, _kinds(types))
        db = await ctx.tenant_db()
        start = await log.checked_after(db, routed.tenant.id, after)
        if start is None:
            start = (await log.head(db)).floor
        size = page_size(first, ctx.cap)
        found, upto = await log.read_visible(db, routed, after=start, limit=size, kinds=kinds)
        last = (await log.head(db)).last
        end = ChangePosition(log.format_position(routed.tenant.id, upto))
        return ChangeConnection(edges=[ChangeEdge(cursor=ChangePosition(c.key), node=Change.of(c)) for c in found],
                                page_info=ChangePageInfo(has_next_page=upto < last, end_cursor=end))

    @strawberry.field(description="The routed tenant's named event consumers (tenant admins).")
    async def event_consumers(self, info: Info) -> list[EventConsumer]:
        ctx = info.context
        return [EventConsumer.of(c) for c in await consumers.listed(await ctx.tenant_db(), await ctx.routed())]

    @strawberry.field(description="One named consumer (reading it needs the rights its types need).")
    async def event_consumer(self, info: Info, name: str) -> EventConsumer:
        ctx = info.context
        return EventConsumer.of(await consumers.find(await ctx.tenant_db(), await ctx.routed(), name))

    @strawberry.field(description="The routed tenant's webhooks (tenant admins).")
    async def webhooks(self, info: Info) -> list[Webhook]:
        ctx = info.context
        return [Webhook.of(w) for w in await webhook_service.listed(ctx.management_db, await ctx.routed())]


@strawberry.type
class ChangeMutations:
    @strawberry.mutation(description="A named consumer that starts at the log's head (tenant admins).")
    async def create_event_consumer(self, info: Info, input: EventConsumerInput) -> EventConsumer:
        ctx = info.context
        record = await consumers.create(await ctx.tenant_db(), await ctx.routed(), name=input.name,
                                        kinds=_kinds(input.types), cap=ctx.platform.settings.consumers_per_tenant)
        return EventConsumer.of(record)

    @strawberry.mutation(description="Everything up to `upTo` is handled: the consumer reads on after it.")
    async def acknowledge_events(self, info: Info, consumer: str, up_to: ChangePosition) -> EventConsumer:
        ctx = info.context
        return EventConsumer.of(await consumers.acknowledge(await ctx.tenant_db(), await ctx.routed(), consumer,
                                                            up_to))

    @strawberry.mutation
    async def delete_event_consumer(self, info: Info, name: str) -> bool:
        ctx = info.context
        return await consumers.remove(await ctx.tenant_db(), await ctx.routed(), name)

    @strawberry.mutation(description="An endpoint that receives changes committed from now on (tenant admins).")
    async def create_webhook(self, info: Info, input: WebhookInput) -> WebhookCreated:
        ctx = info.context
        s = ctx.platform.settings
        hook, secret = await webhook_service.create(
            await ctx.tenant_db(), ctx.management_db, await ctx.routed(), _box(s.resolved_secret_key()), outbound(s),
            url=input.url, kinds=[log.TYPES[t.value] for t in input.types], description=input.description,
            cap=s.webhooks_per_tenant)
        return WebhookCreated(webhook=Webhook.of(hook), secret=secret)

    @strawberry.mutation
    async def delete_webhook(self, info: Info, id: strawberry.ID) -> bool:
        ctx = info.context
        return await webhook_service.remove(ctx.management_db, await ctx.routed(), id)

    @strawberry.mutation(description="Send a logged change to its webhook again, now.")
    async def redeliver_webhook(self, info: Info, delivery_id: strawberry.ID) -> WebhookDelivery:
        ctx = info.context
        s = ctx.platform.settings
        hook, delivery = await webhook_service.delivery(ctx.management_db, await ctx.routed(), delivery_id)
        again = await webhook_service.redeliver(await ctx.tenant_db(), ctx.management_db,
                                                _box(s.resolved_secret_key()), outbound(s),
                                                s.webhook_timeout_seconds, hook, delivery)
        return WebhookDelivery.of(again)


# --- standing shares ---------------------------------------------------------------------------------

@strawberry.enum(description="What data follows a share's devices.")
class ShareData(Enum):
    MEASUREMENTS = "MEASUREMENTS"
    EVENTS = "EVENTS"
    ALARMS = "ALARMS"


@strawberry.enum
class ShareState(Enum):
    PROPOSED = "PROPOSED"
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    REVOKED = "REVOKED"


@strawberry.type(description="A consented, continuous copy of a selection of one tenant's data into another.")
class Share:
    id: strawberry.ID
    source_tenant_id: strawberry.ID
    target_tenant_id: strawberry.ID
    state: ShareState
    include: list[ShareData]
    group_id: strawberry.ID | None
    device_ids: list[strawberry.ID]
    source_accepted: bool
    target_accepted: bool
    copied: Long = strawberry.field(description="Rows copied so far.")
    error: str | None
    created_at: datetime
    _record: strawberry.Private[share_service.Share]

    @classmethod
    def of(cls, s: share_service.Share) -> Share:
        sel = s.selection
        return cls(id=strawberry.ID(str(s.id)), source_tenant_id=strawberry.ID(s.source_tenant),
                   target_tenant_id=strawberry.ID(s.target_tenant), state=ShareState(s.state),
                   include=[ShareData(k) for k in sel["include"]],
                   group_id=strawberry.ID(here("Group", sel["groupId"])) if sel.get("groupId") is not None else None,
                   device_ids=[strawberry.ID(here("Device", d)) for d in sel.get("deviceIds", [])],
                   source_accepted=s.source_accepted_by is not None, target_accepted=s.target_accepted_by is not None,
                   copied=Long(s.copied), error=s.error, created_at=s.created_at, _record=s)

    @strawberry.field(description="Changes of the source's log not yet applied (positions behind); null "
                                  "until the share is active.")
    async def lag(self, info: Info) -> int | None:
        s = self._record
        if s.position is None:
            return None
        ctx = info.context
        routed = await ctx.routed()
        db = await ctx.tenant_db() if routed.tenant.id == s.source_tenant else await ctx.share_source_db(
            s.source_tenant)
        return max(0, (await log.head(db)).last - s.position)


@strawberry.input
class ShareInput:
    target_tenant_id: strawberry.ID
    include: list[ShareData]
    group_id: strawberry.ID | None = None
    device_ids: list[strawberry.ID] | None = None


@strawberry.type
class ShareQueries:
    @strawberry.field(description="Shares out of and into the routed tenant (tenant admins).")
    async def shares(self, info: Info) -> list[Share]:
        ctx = info.context
        return [Share.of(s) for s in await share_service.listed(ctx.management_db, await ctx.routed())]


@strawberry.type
class ShareMutations:
    @strawberry.mutation(description="Propose a share of the routed tenant's devices into another tenant: it runs "
                                     "once an admin of each side has accepted (proposing accepts for this side).")
    async def propose_share(self, info: Info, input: ShareInput) -> Share:
        ctx = info.context
        routed = await ctx.routed()  # global ids are decoded in the routed tenant
        group = require_id(input.group_id, "group") if input.group_id is not None else None
        ids = [require_id(d, "device") for d in input.device_ids or []]
        record = await share_service.propose(
            ctx.management_db, routed, target_tenant=str(input.target_tenant_id), group_id=group,
            device_ids=ids, include=[k.value for k in input.include], cap=ctx.platform.settings.shares_per_tenant)
        return Share.of(record)

    @strawberry.mutation(description="This side's consent (an admin of the share's source or target).")
    async def accept_share(self, info: Info, id: strawberry.ID) -> Share:
        ctx = info.context

        async def source_head(source: str) -> int:
            routed = await ctx.routed()
            db = await ctx.tenant_db() if routed.tenant.id == source else await ctx.share_source_db(source)
            return (await log.head(db)).last

        return Share.of(await share_service.accept(ctx.management_db, await ctx.routed(), id, source_head))

    @strawberry.mutation(description="End a share (an admin of either side); nothing copied is removed.")
    async def revoke_share(self, info: Info, id: strawberry.ID) -> Share:
        ctx = info.context
        return Share.of(await share_service.revoke(ctx.management_db, await ctx.routed(), id))
