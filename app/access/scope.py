"""Which devices a caller may touch inside its tenant, as one SQL predicate.

Enforced in the data layer, in one place: every query and mutation on devices or device
data adds `scope.devices(column)`, so lists, single reads, aggregates and writes agree.
- unrestricted: the whole tenant;
- group-scoped membership: devices in the given groups or any of their subgroups;
- device token: that one device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, column, literal, select, table, true
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import KeyedColumnElement

from app.models.tenant import group_devices, groups


@dataclass(frozen=True)
class Scope:
    group_ids: tuple[int, ...] | None = None
    device_id: int | None = None

    @property
    def unrestricted(self) -> bool:
        return self.group_ids is None and self.device_id is None

    def devices(self, device_id: KeyedColumnElement[Any]) -> ColumnElement[bool]:
        """A predicate on a device id column: true for devices in scope."""
        if self.device_id is not None:
            return device_id == self.device_id
        if self.group_ids is None:
            return true()
        return device_id.in_(select(group_devices.c.device_id).where(group_devices.c.group_id.in_(
            select(self._group_closure().c.id))))

    def groups(self, group_id: KeyedColumnElement[Any]) -> ColumnElement[bool]:
        """A predicate on a group id column: true for groups in scope (the granted ones and below)."""
        if self.device_id is not None:
            return literal(False)
        if self.group_ids is None:
            return true()
        return group_id.in_(select(self._group_closure().c.id))

    def _group_closure(self) -> Any:
        assert self.group_ids is not None
        closure = select(groups.c.id).where(groups.c.id.in_(self.group_ids)).cte("scope_groups", recursive=True)
        return closure.union(select(groups.c.id).where(groups.c.parent_id == closure.c.id))  # ends even on a cycle


UNRESTRICTED = Scope()


_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


@lru_cache(maxsize=4096)
def scope_sql(scope: Scope, kind: str, row_column: str) -> str:
    """Scope's own predicate (`kind`: devices or groups) on `row.column`, as SQL with its ids inlined
    (they are integers), rendered once per scope: for statements sent as text (compiled reads,
    the device check of writes)."""
    row, name = row_column.split(".")
    target = table(row, column(name)).c[name]
    predicate = scope.devices(target) if kind == "devices" else scope.groups(target)
    return str(predicate.compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True}))
