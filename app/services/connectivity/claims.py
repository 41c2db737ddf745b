"""Devices that join on their own (bootstrap): a device with a factory identity asks, an admin accepts,
and only then the device collects its credentials — once (API.md `requestDeviceRegistration`;
Mender's preauthorise-and-accept, Cumulocity's device credentials requests).

    device:  requestDeviceRegistration(externalId, claimCode)   anonymous, X-Tenant-ID names the tenant
             → PENDING                     (the first request binds the claim code to the external id)
    admin:   acceptDeviceRegistration(id)  → ACCEPTED: the device exists now (maxDevices, audit, change log)
    device:  requestDeviceRegistration(…) again → DELIVERED, with a device token in this answer only

- **The claim code** is the device's secret (at least 16 characters, printed or flashed at the factory):
  every later request for that external id must present it (UNAUTHENTICATED otherwise), so nobody who
  merely learns an external id can collect the credentials. It is stored hashed.
- **Preauthorised** external ids (preauthorizeDevices) are accepted on their first request, and their
  credentials delivered in that same answer; the first claim code presented is bound.
- **Once**: a DELIVERED request answers without credentials; a lost token is replaced by an admin
  (createDeviceToken), never by asking again. An external id already used by a device cannot be
  claimed: credentials of an existing device are never handed to a claimant.
- At most MAX_OPEN pending requests per tenant (LIMIT_EXCEEDED beyond): an anonymous caller cannot
  fill a tenant's table; the anonymous and per-tenant rate limits apply as to every request.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from app.db.transaction import Executor
from app.errors import Conflict, InvalidInput, LimitExceeded, NotFound, Unauthenticated
from app.inputs import InputRejected, check_string
from app.models.tenant import device_requests
from app.services import data_plane
from app.services.data_plane import Plane
from app.services.inventory import device_tokens, devices

MAX_OPEN = 10_000
MAX_PREAUTHORIZED = 10_000  # per call
MIN_CLAIM_CODE, MAX_CLAIM_CODE = 16, 200
STATUSES = ("PREAUTHORIZED", "PENDING", "ACCEPTED", "DELIVERED")
COLUMNS = (device_requests.c.id, device_requests.c.external_id, device_requests.c.status,
           device_requests.c.device_id, device_requests.c.created_at, device_requests.c.requested_at,
           device_requests.c.accepted_at, device_requests.c.delivered_at)


@dataclass(frozen=True)
class Request:
    id: int
    external_id: str
    status: str
    device_id: int | None
    created_at: datetime
    requested_at: datetime | None
    accepted_at: datetime | None
    delivered_at: datetime | None
    credentials: str | None = None  # the device token, in the one answer that delivers it


def _request(row: object) -> Request:
    return Request(*row)  # type: ignore[misc]


def check_external_id(value: str, field: str = "externalId") -> str:
    try:
        value = check_string(value).strip()
    except InputRejected as exc:
        raise InvalidInput(str(exc), field=field) from None
    if not 1 <= len(value) <= 200:
        raise InvalidInput("externalId must be 1-200 characters", field=field)
    return value


def _claim_hash(external_id: str, claim_code: str | None) -> bytes:
    if claim_code is None:
        raise InvalidInput("a claim code is needed (this server does not take device certificates)",
                           field="claimCode")
    if not MIN_CLAIM_CODE <= len(claim_code) <= MAX_CLAIM_CODE or "\x00" in claim_code:
        raise InvalidInput(f"claimCode must be {MIN_CLAIM_CODE}-{MAX_CLAIM_CODE} characters", field="claimCode")
    # Bound to the external id: the same code on two devices hashes apart.
    return hashlib.sha256(f"{external_id}\x00{claim_code}".encode()).digest()


async def _locked(db: Executor, *where: Any) -> tuple[Request, bytes | None] | None:
    """The request and its claim hash (None: preauthorised, never asked), locked to the end."""
    row = (await db.execute(select(*COLUMNS, device_requests.c.claim_hash).where(*where).with_for_update())
           ).one_or_none()
    return None if row is None else (_request(row[:-1]), row[-1])


async def request(plane: Plane, external_id: str, claim_code: str | None) -> Request:
    """A device asks to join (or asks again, for its credentials once it was accepted)."""
    external_id = check_external_id(external_id)
    claim = _claim_hash(external_id, claim_code)
    db = plane.db
    found = await _locked(db, device_requests.c.external_id == external_id)
    if found is None:
        await _check_unclaimed(plane, external_id)
        await db.execute(insert(device_requests).values(external_id=external_id, status="PENDING",
                                                        claim_hash=claim, requested_at=func.now())
                         .on_conflict_do_nothing(index_elements=["external_id"]))
        found = await _locked(db, device_requests.c.external_id == external_id)  # ours, or a racer's
        assert found is not None
        await plane.audit("device_request.created", external_id)
    current, bound = found
    if bound is None:  # preauthorised, never asked: this claim code is bound now
        await _check_unclaimed(plane, external_id)
        await db.execute(update(device_requests).where(device_requests.c.id == current.id)
                         .values(claim_hash=claim, requested_at=func.now()))
        return await _deliver(plane, await _accept(plane, current))
    if not hmac.compare_digest(bound, claim):
        raise Unauthenticated(f"the claim code does not match the one {external_id} asked with")
    return await _deliver(plane, current) if current.status == "ACCEPTED" else current


async def _check_unclaimed(plane: Plane, external_id: str) -> None:
    if await devices.device_by_external_id(plane.db, plane.scope, type=devices.DEFAULT_EXTERNAL_ID_TYPE,
                                           value=external_id) is not None:
        raise Conflict(f"a device with externalId {external_id} is registered already", field="externalId")
    open_ = (await plane.db.execute(select(func.count()).select_from(device_requests).where(
        device_requests.c.status == "PENDING"))).scalar_one()
    if open_ >= MAX_OPEN:
        raise LimitExceeded(f"{MAX_OPEN} device registration requests are waiting already",
                            limit="pendingDeviceRequests", available=0)


async def _accept(plane: Plane, found: Request) -> Request:
    """The device is created (maxDevices, metering, audit, the change log: as createDevice)."""
    device = await data_plane.create_device(plane, name=found.external_id, type=None, external_id=found.external_id,
                                            fragments={}, group_id=None, parent_id=None, template_id=None)
    row = (await plane.db.execute(update(device_requests).where(device_requests.c.id == found.id).values(
        status="ACCEPTED", device_id=device.id, accepted_at=func.now()).returning(*COLUMNS))).one()
    await plane.audit("device_request.accepted", found.external_id)
    return _request(row)


async def _deliver(plane: Plane, accepted: Request) -> Request:
    if accepted.device_id is None:  # its device was deleted before it collected its credentials
        await plane.db.execute(update(device_requests).where(device_requests.c.id == accepted.id).values(
            status="PENDING", accepted_at=None))
        raise Conflict("the device accepted for this request was deleted: an admin must accept it again")
    token = await device_tokens.create(plane.db, tenant_id=plane.tenant.id, device_id=accepted.device_id)
    row = (await plane.db.execute(update(device_requests).where(device_requests.c.id == accepted.id).values(
        status="DELIVERED", delivered_at=func.now()).returning(*COLUMNS))).one()
    await plane.audit("device_token.delivered", str(accepted.device_id))
    return replace(_request(row), credentials=token)


async def accept(plane: Plane, request_id: int) -> Request:
    """An admin lets a PENDING device in (again: the answer as it stands, nothing done twice)."""
    found = await _locked(plane.db, device_requests.c.id == request_id)
    if found is None:
        raise NotFound(f"device registration request {request_id} not found")
    current = found[0]
    if current.status == "PREAUTHORIZED":
        raise Conflict(f"{current.external_id} is preauthorised and has not asked yet: it is accepted when it does")
    return await _accept(plane, current) if current.status == "PENDING" else current


async def preauthorize(plane: Plane, external_ids: Sequence[str]) -> int:
    """Accept these external ids ahead of time; those that asked already are accepted now. Returns
    how many were preauthorised or accepted (an id accepted, delivered or preauthorised before
    counts nothing)."""
    if len(external_ids) > MAX_PREAUTHORIZED:
        raise InvalidInput(f"at most {MAX_PREAUTHORIZED} external ids per call", field="externalIds")
    wanted = sorted({check_external_id(e, "externalIds") for e in external_ids})
    if not wanted:
        return 0
    added = (await plane.db.execute(insert(device_requests).values(
        [{"external_id": e, "status": "PREAUTHORIZED"} for e in wanted])
        .on_conflict_do_nothing(index_elements=["external_id"]).returning(device_requests.c.id))).all()
    pending = (await plane.db.execute(select(*COLUMNS).where(
        device_requests.c.external_id.in_(wanted), device_requests.c.status == "PENDING")
        .order_by(device_requests.c.id).with_for_update())).all()
    for row in pending:
        await _accept(plane, _request(row))
    if added:
        await plane.audit("device_request.preauthorized", None, [{"attribute": "externalIds", "previous": None,
                                                                   "new": len(added)}])
    return len(added) + len(pending)


async def listing(db: Executor, status: str | None, *, after: int, first: int) -> list[Request]:
    query = select(*COLUMNS).where(device_requests.c.id > after)
    if status is not None:
        query = query.where(device_requests.c.status == status)
    return [_request(r) for r in (await db.execute(query.order_by(device_requests.c.id).limit(first + 1))).all()]
