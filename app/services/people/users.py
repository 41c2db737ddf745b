"""Identities: one user per email (case-insensitive), across every tenant."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, Select, func, insert, select

from app.db.transaction import Executor
from app.errors import InvalidInput
from app.models.management import users

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}$")


@dataclass(frozen=True)
class UserRecord:
    id: UUID
    email: str
    password_hash: str | None
    disabled: bool = False


_COLUMNS = (users.c.id, users.c.email, users.c.password_hash, users.c.disabled_at)


def _record(row: Any) -> UserRecord:
    return UserRecord(row.id, row.email, row.password_hash, row.disabled_at is not None)


def normalise_email(email: str, *, field: str = "email") -> str:
    email = email.strip()
    if not _EMAIL.match(email):
        raise InvalidInput(f"{field} is not a valid email address", field=field)
    return email


async def user_by_email(db: Executor, email: str) -> UserRecord | None:
    stmt = select(*_COLUMNS).where(func.lower(users.c.email) == email.lower())
    row = (await db.execute(stmt)).first()
    return _record(row) if row else None


def user_statement(user_id: UUID | ColumnElement[Any], *, active: bool = False) -> Select[Any]:
    """The user's id and email (the compiled read path's `me`); `active`: only if not disabled."""
    stmt = select(users.c.id, users.c.email).where(users.c.id == user_id)
    return stmt.where(users.c.disabled_at.is_(None)) if active else stmt


async def user_by_id(db: Executor, user_id: UUID) -> UserRecord | None:
    row = (await db.execute(select(*_COLUMNS).where(users.c.id == user_id))).first()
    return _record(row) if row else None


async def create_user(db: Executor, *, email: str, password_hash: str | None) -> UserRecord:
    values: dict[str, Any] = {"email": email, "password_hash": password_hash}
    row = (await db.execute(insert(users).values(**values).returning(users.c.id))).one()
    return UserRecord(row.id, email, password_hash)
