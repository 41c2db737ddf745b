"""Relay-style connections built from service pages (keyset pagination underneath)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import strawberry

from app.services.pagination import Page

NodeT = TypeVar("NodeT")
RecordT = TypeVar("RecordT")


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[NodeT]):
    cursor: str
    node: NodeT


@strawberry.type
class Connection(Generic[NodeT]):
    edges: list[Edge[NodeT]]
    page_info: PageInfo
    _count: strawberry.Private[Callable[[], Awaitable[int]] | None] = None

    @strawberry.field(description="Total matching items (one COUNT query: ask only when shown); null where "
                                  "counting is not cheap (measurements, events, alarms, operations).")
    async def total_count(self) -> int | None:
        return await self._count() if self._count is not None else None

    @classmethod
    def of(
        cls,
        page: Page[RecordT],
        convert: Callable[[RecordT], NodeT],
        count: Callable[[], Awaitable[int]] | None = None,
    ) -> Connection[NodeT]:
        edges = [Edge(cursor=c, node=convert(item)) for c, item in zip(page.cursors, page.items, strict=True)]
        return cls(
            edges=edges,
            page_info=PageInfo(has_next_page=page.has_next_page, end_cursor=page.cursors[-1] if page.cursors else None),
            _count=count,
        )
