"""Per-request DataLoaders: one query per relation per request, however many devices are listed.

Named `<Thing>By<Key>Loader`; each batch runs in the routed tenant's transaction with the
caller's scope, so a loader can never return more than the caller could query directly.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from strawberry.dataloader import DataLoader

from app.access.scope import Scope
from app.db.transaction import BulkExecutor
from app.services.data import alarms as alarm_service
from app.services.data.alarms import AlarmRecord
from app.services.inventory import relations as inventory
from app.services.inventory.devices import DeviceRecord, ExternalId, GroupRecord

K = TypeVar("K")
V = TypeVar("V")

AlarmKey = tuple[int, tuple[str, ...], int]  # device id, statuses, limit
ChildrenKey = tuple[int, int]  # device id, limit


class SharedLoader(DataLoader[K, V]):
    """A DataLoader whose futures survive one waiter's cancellation.

    Resolvers asking for the same key await the same future. When graphql-core cancels one of
    them (a sibling non-null field failed), asyncio cancels the future that task awaits, and every
    other resolver awaiting it then raised CancelledError out of the whole request (found by
    tests/test_compiled_reads.py's corpus). Each waiter gets a shield of its own."""

    def load(self, key: K) -> Awaitable[V]:
        future = asyncio.ensure_future(super().load(key))  # the loader's own future, typed as one
        future.add_done_callback(_retrieved)
        return asyncio.shield(future)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a batch's failure as seen: when every waiter was cancelled (the request ended, its
    transaction with it), nobody asks, and asyncio logged "Future exception was never retrieved"."""
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True)
class Loaders:
    groups_by_device: DataLoader[int, list[GroupRecord]]
    children_by_device: DataLoader[ChildrenKey, list[DeviceRecord]]
    external_ids_by_device: DataLoader[int, list[ExternalId]]
    device_by_id: DataLoader[int, DeviceRecord | None]
    alarms_by_device: DataLoader[AlarmKey, list[AlarmRecord]]


def _many(fetch: Callable[[Sequence[int]], Awaitable[dict[int, list[V]]]]) -> DataLoader[int, list[V]]:
    async def load(keys: list[int]) -> list[list[V]]:
        found = await fetch(keys)
        return [found.get(k, []) for k in keys]

    return SharedLoader(load_fn=load)


def build_loaders(db: Callable[[], Awaitable[BulkExecutor]], scope: Callable[[], Awaitable[Scope]]) -> Loaders:
    async def groups(ids: Sequence[int]) -> dict[int, list[GroupRecord]]:
        return await inventory.groups_of_devices(await db(), await scope(), ids)

    async def children(keys: list[ChildrenKey]) -> list[list[DeviceRecord]]:
        by_limit: dict[int, list[int]] = defaultdict(list)
        for device_id, limit in keys:
            by_limit[limit].append(device_id)
        found = {limit: await inventory.children_of_devices(await db(), await scope(), device_ids, limit)
                 for limit, device_ids in by_limit.items()}
        return [found[limit].get(device_id, []) for device_id, limit in keys]

    async def external_ids(ids: Sequence[int]) -> dict[int, list[ExternalId]]:
        return await inventory.external_ids_of_devices(await db(), ids)

    async def devices(keys: list[int]) -> list[DeviceRecord | None]:
        found = await inventory.devices_by_ids(await db(), await scope(), keys)
        return [found.get(k) for k in keys]

    async def alarms(keys: list[AlarmKey]) -> list[list[AlarmRecord]]:
        by_args: dict[tuple[tuple[str, ...], int], list[int]] = defaultdict(list)
        for device_id, statuses, limit in keys:
            by_args[(statuses, limit)].append(device_id)
        results: dict[AlarmKey, list[AlarmRecord]] = {}
        for (statuses, limit), device_ids in by_args.items():
            found = await alarm_service.alarms_of_devices(await db(), await scope(), device_ids, status=statuses,
                                                          limit=limit)
            for device_id in device_ids:
                results[(device_id, statuses, limit)] = found.get(device_id, [])
        return [results[k] for k in keys]

    return Loaders(
        groups_by_device=_many(groups),
        children_by_device=SharedLoader(load_fn=children),
        external_ids_by_device=_many(external_ids),
        device_by_id=SharedLoader(load_fn=devices),
        alarms_by_device=SharedLoader(load_fn=alarms),
    )
