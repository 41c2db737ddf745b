"""Database engines: an owner engine for DDL and an application engine for requests.

The owner engine logs in with TENANTRY_DATABASE_URL (a role that may create roles and
schemas). It runs migrations and provisioning. The application engine logs in as the
NOINHERIT application role, which can read no tenant table until a transaction switches
to that tenant's role; every request goes through it.

Both engines are AUTOCOMMIT at the driver: transactions are opened explicitly by
`app.db.transaction`, which lets the routing prefix travel with BEGIN in one round trip.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db.embedded import embedded_database_url
from app.settings import Settings


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def owner_database_url(settings: Settings) -> str:
    if settings.database_url:
        url = make_url(settings.database_url)
        if url.drivername in {"postgresql", "postgres"}:
            url = url.set(drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)
    return embedded_database_url(settings.data_dir)


def app_role_password(settings: Settings) -> str:
    """The application role's password, derived from the secret key so nothing else must be kept."""
    key = settings.resolved_secret_key().encode()
    return hmac.new(key, b"tenantry-app-role-password", hashlib.sha256).hexdigest()


def app_database_url(settings: Settings, owner_url: str) -> str:
    url = make_url(owner_url).set(username=settings.app_role, password=app_role_password(settings))
    return url.render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int, max_overflow: int, pool_timeout: float = 30.0) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # A bounded wait: a request that cannot get a connection soon is refused (UNAVAILABLE),
        # not left hanging for SQLAlchemy's default 30 s.
        pool_timeout=pool_timeout,
        # Recycled so the per-connection catalog caches (which grow with every tenant
        # schema a connection touches) are bounded in time.
        pool_recycle=1800,
        isolation_level="AUTOCOMMIT",
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        # Timestamps come back in UTC whatever the server's default zone, so a DateTime reads
        # the same from every server and on both read paths (app.graphql.engine.compiled formats UTC);
        # text in UTF-8 whatever the database's encoding (compiled reads take it as it is sent).
        connect_args={"options": "-c TimeZone=UTC", "client_encoding": "UTF8"},
        # Rolled back on return only when a transaction is still open (below): every transaction
        # here ends with an explicit COMMIT or ROLLBACK, and an unconditional rollback per
        # checkin cost a greenlet round into psycopg on every request.
        pool_reset_on_return=None,
    )
    event.listen(engine.sync_engine.pool, "reset", _rollback_if_open)
    return engine


def _rollback_if_open(dbapi_connection: Any, record: Any, state: Any) -> None:
    """The pool's reset: whatever is still open on a returned connection is rolled back, so no
    transaction (and no transaction-local role or search_path) reaches the next checkout."""
    if state.terminate_only or not state.asyncio_safe or dbapi_connection is None:
        return
    driver = dbapi_connection.driver_connection
    if driver is None or driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        dbapi_connection.rollback()


@dataclass
class Database:
    owner: AsyncEngine
    app: AsyncEngine

    @classmethod
    def connect(cls, settings: Settings) -> Database:
        owner_url = owner_database_url(settings)
        return cls(
            owner=make_engine(owner_url, pool_size=settings.owner_pool_size, max_overflow=2),
            app=make_engine(
                app_database_url(settings, owner_url),
                pool_size=settings.pool_size,
                max_overflow=settings.pool_overflow,
                pool_timeout=settings.pool_wait_seconds,
            ),
        )

    async def dispose(self) -> None:
        await self.app.dispose()
        await self.owner.dispose()


async def own_connection(engine: AsyncEngine) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    """A connection of its own to `engine`'s database as `engine`'s role, outside its pool and in
    autocommit: for a process's long-lived listener (app.realtime.hub) and waker (app.db.wakes)."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    return await psycopg.AsyncConnection.connect(*cargs, **{**cparams, "autocommit": True})
