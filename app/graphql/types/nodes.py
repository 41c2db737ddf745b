"""`node(id)` and `nodes(ids)`: any object by its global id, inside the routed tenant."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import strawberry

from app.auth.roles import DEVICES_READ
from app.errors import InvalidInput
from app.graphql.context import Context
from app.graphql.node import Node
from app.graphql.types.data import Event, Measurement, Operation
from app.graphql.types.inventory import Alarm, Device, Group
from app.ids import decode
from app.services import nodes as service

Info = strawberry.Info[Context, None]
MAX_NODES = 100
_MAKE: dict[str, Callable[[Any], Node]] = {"Device": Device.of, "Group": Group.of, "Alarm": Alarm.of,
                                           "Event": Event.of, "Operation": Operation.of, "Measurement": Measurement.of}


async def _resolve(info: Info, ids: list[strawberry.ID]) -> list[Node | None]:
    """Each id's object, or null: of another tenant, of no such row, or out of the caller's scope."""
    ctx = info.context
    routed = await ctx.authorize(DEVICES_READ)
    db = await ctx.tenant_db()
    wanted: dict[str, set[int]] = defaultdict(set)
    keys: list[tuple[str, int] | None] = []
    for value in ids:
        decoded = decode(value)
        if decoded is None:
            raise InvalidInput(f"{value[:80]!r} is not an id (ids are opaque strings, as returned by the API)",
                               field="id")
        type_name, tenant, local = decoded
        if tenant != routed.tenant.id or type_name not in service.TYPES:
            keys.append(None)
            continue
        wanted[type_name].add(local)
        keys.append((type_name, local))
    found = {name: await service.by_ids(db, routed.scope, name, sorted(locals_)) for name, locals_ in wanted.items()}
    out: list[Node | None] = []
    for key in keys:
        record = found[key[0]].get(key[1]) if key is not None else None
        out.append(_MAKE[key[0]](record) if key is not None and record is not None else None)
    return out


@strawberry.type
class NodeQueries:
    @strawberry.field(description="The object with this global id in the routed tenant; null for another tenant's.")
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        return (await _resolve(info, [id]))[0]

    @strawberry.field(description=f"Objects by global id, in order (null where `node` would be); at most {MAX_NODES}.")
    async def nodes(self, info: Info, ids: list[strawberry.ID]) -> list[Node | None]:
        if len(ids) > MAX_NODES:
            raise InvalidInput(f"at most {MAX_NODES} ids", field="ids", cap=MAX_NODES)
        return await _resolve(info, ids)
