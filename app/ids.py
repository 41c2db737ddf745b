"""Global object ids: unique across tenants and types, opaque to clients (API.md).

A tenant's rows are numbered per tenant (device 1 exists in every tenant), so the GraphQL id of
such an object carries its type and tenant too: base64url("Device:t123:17"), without padding.
Client caches (Apollo's, Relay's) never mix two tenants' "device 1", `node(id)` can tell the type,
and an id from another tenant is recognised as such (→ null / NOT_FOUND) instead of naming
whatever has the same number here. Tenants (`t…`), users and other UUID-keyed objects already
have ids unique everywhere and keep them.

Which tenant a request's ids belong to is the tenant the access gate routed it to: the gate sets
it (`bind`) on a holder created with the request, which every task of the request shares, so
resolvers encode and services decode without passing it along. Work for another tenant in the
same request (a copy's source) names that tenant explicitly.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from app.errors import InvalidInput
from app.inputs import parse_id

# The service layer's names for kinds (`require_id(value, "device")`) → GraphQL type names.
KINDS = {"device": "Device", "group": "Group", "alarm": "Alarm", "event": "Event", "operation": "Operation",
         "measurement": "Measurement", "rule": "RetentionRule",
         "deviceRequest": "DeviceRequest"}
TYPES = frozenset(KINDS.values())
_RAW = re.compile(r"([A-Za-z]{1,20}):(t[0-9]{1,19}|management):([0-9]{1,19})")
_SHAPE = re.compile(r"[A-Za-z0-9_-]{8,80}")


@dataclass
class Holder:
    tenant: str | None = None


_CURRENT: ContextVar[Holder | None] = ContextVar("tenantry_ids", default=None)


def begin(tenant: str | None = None) -> Holder:
    """A new request (or subscription event): ids speak of `tenant`, or of the one bound later."""
    holder = Holder(tenant)
    _CURRENT.set(holder)
    return holder


def current_tenant() -> str:
    holder = _CURRENT.get()
    if holder is None or holder.tenant is None:
        raise RuntimeError("no tenant bound for global ids (the request was not routed)")
    return holder.tenant


def encode(type_name: str, tenant: str, local: int) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{tenant}:{local}".encode()).rstrip(b"=").decode()


def encoder(type_name: str, tenant: str) -> Callable[[int | None], str | None]:
    """`encode` for one type and tenant, None staying None: the prefix built once, the base64 in C
    (a compiled page encodes a hundred ids a request)."""
    prefix = f"{type_name}:{tenant}:".encode()
    b2a = binascii.b2a_base64

    def encode_one(local: int | None) -> str | None:
        if local is None:
            return None
        return b2a(prefix + b"%d" % local, newline=False).translate(_URLSAFE, b"=").decode()

    return encode_one


_URLSAFE = bytes.maketrans(b"+/", b"-_")  # with b"=" deleted: urlsafe_b64encode(...).rstrip(b"=") in one pass


def here(type_name: str, local: int) -> str:
    """The global id of a row of the current tenant."""
    return encode(type_name, current_tenant(), local)


def decode(value: str) -> tuple[str, str, int] | None:
    """(type, tenant, local id) of a well-formed global id, else None."""
    if not _SHAPE.fullmatch(value):
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    match = _RAW.fullmatch(raw)
    if match is None:
        return None
    local = parse_id(match.group(3))
    return (match.group(1), match.group(2), local) if local is not None else None


def local_id(value: object, kind: str, tenant: str | None = None) -> int | None:
    """The row number `value` names in `tenant` (default: the request's), for a `kind` of the
    service layer ("device", "group", …). Ints are the services' own values and pass as they are.
    A string must be a global id (INVALID_INPUT otherwise); one of another type or tenant names
    nothing here (None)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return parse_id(value)
    type_name = KINDS.get(kind)
    if type_name is None or not isinstance(value, str):
        return parse_id(value)
    decoded = decode(value)
    if decoded is None:
        raise InvalidInput(f"{value[:80]!r} is not a {type_name} id (ids are opaque strings, as returned by the API)",
                           field=f"{kind}Id")
    found_type, found_tenant, local = decoded
    if found_type != type_name or found_tenant != (tenant or current_tenant()):
        return None
    return local
