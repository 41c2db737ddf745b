"""Standing shares: a consented, continuous copy of a selection of one tenant's data into another.

A share names a source, a target, devices (a group and its subgroups, or a list) and what follows
them (MEASUREMENTS, EVENTS, ALARMS). It runs only once an admin of the source *and* an admin of
the target — direct members holding tenant:admin, never a parent-level caller — have accepted it;
either may revoke it. From then on (app.realtime.shares) the source's new changes are read from
its log and applied to the target in ONE transaction that also moves the share's position, each
statement under one tenant's role: a crash applies a batch wholly or not at all, so each change
arrives exactly once, in log order. Copies carry their origin (copyData's provenance: devices
mapped in `provenance`, rows with origin_tenant/origin_id), and appear in the target's own log.
Suspending either tenant pauses the share; deleting either ends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import func, insert, or_, select, update

from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.db.transaction import Executor
from app.errors import Forbidden, InvalidInput, LimitExceeded, NotFound
from app.models.management import shares, tenants
from app.runtime import announcements
from app.services.audit import records

DATA = ("MEASUREMENTS", "EVENTS", "ALARMS")
KINDS = {"MEASUREMENTS": "measurement", "EVENTS": "event", "ALARMS": "alarm"}


@dataclass(frozen=True)
class Share:
    id: UUID
    source_tenant: str
    target_tenant: str
    proposed_in: str
    selection: dict[str, Any]
    state: str
    source_accepted_by: str | None
    target_accepted_by: str | None
    position: int | None
    copied: int
    error: str | None
    created_at: datetime
    updated_at: datetime


COLUMNS = tuple(shares.c)


def _share(row: Any) -> Share:
    return Share(*tuple(row))


def _who(routed: Routed) -> str:
    return f"{routed.actor.type}:{routed.actor.id}"


def _consenting(routed: Routed) -> None:
    """Consent is given by the tenant's own admins: a parent-level caller cannot give it for them."""
    routed.require(TENANT_ADMIN)
    if routed.parent_level:
        raise Forbidden("only the tenant's own admins can consent to a share (not a parent-level member)")


async def propose(management: Executor, routed: Routed, *, target_tenant: str, group_id: int | None,
                  device_ids: Sequence[int], include: Sequence[str], cap: int) -> Share:
    """A share out of the routed tenant. Proposed by its own admin, the source side has consented."""
    routed.require(TENANT_ADMIN)
    routed.require_data_access()
    if (group_id is None) == (not device_ids):
        raise InvalidInput("give either groupId or deviceIds", field="deviceIds")
    if not include or any(k not in DATA for k in include):
        raise InvalidInput(f"include is one or more of {', '.join(DATA)}", field="include")
    if target_tenant == routed.tenant.id:
        raise InvalidInput("a share goes to another tenant", field="targetTenantId")
    status = (await management.execute(select(tenants.c.status).where(tenants.c.id == target_tenant))).scalar()
    if status is None or status == "DELETED":
        raise NotFound(f"tenant {target_tenant} not found")
    count = (await management.execute(select(func.count()).select_from(shares).where(
        shares.c.source_tenant == routed.tenant.id, shares.c.state != "REVOKED"))).scalar_one()
    if count >= cap:
        raise LimitExceeded(f"at most {cap} shares out of a tenant", limit="sharesPerTenant", max=cap)
    selection = {"groupId": group_id, "deviceIds": sorted(set(device_ids)), "include": sorted(set(include))}
    row = (await management.execute(insert(shares).values(
        source_tenant=routed.tenant.id, target_tenant=target_tenant, proposed_in=routed.tenant.id,
        selection=selection, source_accepted_by=None if routed.parent_level else _who(routed))
        .returning(*COLUMNS))).one()
    share = _share(row)
    await _told(management, routed, share, "share.proposed")
    return share


async def _told(management: Executor, routed: Routed, share: Share, action: str) -> None:
    """Both sides' audit trails and change logs hear of every step."""
    for tenant in (share.source_tenant, share.target_tenant):
        await records.record(management, tenant_id=tenant, actor=routed.actor, action=action, target=str(share.id),
                             changes=[{"attribute": "state", "previous": None, "new": share.state}])
        await announcements.announce(management, tenant, "share", share.state, id=str(share.id))


async def find(management: Executor, routed: Routed, share_id: str) -> Share:
    try:
        key = UUID(share_id)
    except ValueError:
        raise InvalidInput("not a share id", field="id") from None
    row = (await management.execute(select(*COLUMNS).where(shares.c.id == key, or_(
        shares.c.source_tenant == routed.tenant.id, shares.c.target_tenant == routed.tenant.id)))).first()
    if row is None:
        raise NotFound(f"share {share_id} not found")
    return _share(row)


async def listed(management: Executor, routed: Routed) -> list[Share]:
    routed.require(TENANT_ADMIN)
    rows = (await management.execute(select(*COLUMNS).where(or_(
        shares.c.source_tenant == routed.tenant.id, shares.c.target_tenant == routed.tenant.id))
        .order_by(shares.c.created_at))).all()
    return [_share(r) for r in rows]


async def accept(management: Executor, routed: Routed, share_id: str, source_head: Any) -> Share:
    """The routed side consents; with both, the share is ACTIVE from the source's head (`source_head()`)."""
    _consenting(routed)
    share = await find(management, routed, share_id)
    if share.state != "PROPOSED":
        raise InvalidInput(f"the share is {share.state}: only a PROPOSED share is accepted", field="id")
    side = "source_accepted_by" if routed.tenant.id == share.source_tenant else "target_accepted_by"
    values: dict[str, Any] = {side: _who(routed), "updated_at": func.now()}
    other = share.target_accepted_by if side == "source_accepted_by" else share.source_accepted_by
    if other is not None:
        values.update(state="ACTIVE", position=await source_head(share.source_tenant))
    row = (await management.execute(update(shares).where(shares.c.id == share.id).values(**values)
                                    .returning(*COLUMNS))).one()
    share = _share(row)
    await _told(management, routed, share, "share.accepted")
    return share


async def revoke(management: Executor, routed: Routed, share_id: str) -> Share:
    _consenting(routed)
    share = await find(management, routed, share_id)
    if share.state == "REVOKED":
        return share
    row = (await management.execute(update(shares).where(shares.c.id == share.id)
                                    .values(state="REVOKED", updated_at=func.now()).returning(*COLUMNS))).one()
    share = _share(row)
    await _told(management, routed, share, "share.revoked")
    return share
