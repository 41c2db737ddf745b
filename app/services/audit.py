"""Append-only audit records of management-plane events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert

from app.db.transaction import Executor
from app.models.management import audit_log


@dataclass(frozen=True)
class Actor:
    """Who did something: a user, an API token, a device, or the operator's shell."""

    type: str
    id: str | None

    @classmethod
    def user(cls, user_id: object) -> Actor:
        return cls("user", str(user_id))


SYSTEM = Actor("system", None)


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """[{attribute, previous, new}] for every attribute whose value changed."""
    return [
        {"attribute": key, "previous": before.get(key), "new": value}
        for key, value in after.items()
        if before.get(key) != value
    ]


async def record(
    db: Executor,
    *,
    tenant_id: str,
    actor: Actor,
    action: str,
    target: str | None,
    changes: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
) -> None:
    await db.execute(
        insert(audit_log).values(
            tenant_id=tenant_id,
            actor_type=actor.type,
            actor_id=actor.id,
            action=action,
            target=target,
            changes=changes or [],
            request_id=request_id,
        )
    )
