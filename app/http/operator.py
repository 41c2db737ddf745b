"""The operator's endpoints: /healthz (process up), /readyz (database reachable, a connection
obtainable) and /metrics (Prometheus, operator-only)."""

from __future__ import annotations

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.db.transaction import Executor
from app.errors import AppError
from app.http.errors import error_response
from app.models.management import copy_jobs, spare_schemas
from app.runtime.platform import Platform


class OperatorEndpoints:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        # Operator-only: the per-tenant series name every tenant, whose existence is never
        # disclosed to outsiders. A management-tenant token (user or API token) with metrics:read.
        access = self.platform.gate.request(authorization=request.headers.get("authorization"), tenant_header=None,
                                   request_id=request.state.request_id)
        try:
            await access.require_operator()
            await self._database_gauges(access.management_db)
        except AppError as exc:
            return error_response(exc)
        finally:
            await access.finish(commit=False)
        return Response(self.platform.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def _database_gauges(self, db: Executor) -> None:
        """State kept in the database, read at scrape time: spare schemas, copy jobs by status."""
        self.platform.metrics.spare_schemas.set((await db.execute(select(func.count()).select_from(spare_schemas)))
                                       .scalar_one())
        rows = (await db.execute(select(copy_jobs.c.status, func.count().label("n"))
                                 .group_by(copy_jobs.c.status))).all()
        by_status: dict[str, int] = {row.status: row.n for row in rows}
        for status in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED"):
            self.platform.metrics.copy_jobs.labels(status).set(by_status.get(status, 0))

    async def readyz(self, request: Request) -> Response:
        # A fresh connection, not a pooled one: a server whose PostgreSQL refuses new connections
        # (slots used up, in recovery, down) is not ready, even while its pool still holds some.
        # The embedded PostgreSQL's supervisor says which trouble it is: "disk full" (writes fail, and
        # out of WAL space the server stops), "restarting" or "down" (app.db.embedded).
        embedded = self.platform.embedded.check() if self.platform.embedded is not None else None
        url = self.platform.db.app.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            async with await psycopg.AsyncConnection.connect(url, connect_timeout=2, autocommit=True) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            return JSONResponse({"status": "unavailable", "error": type(exc).__name__,
                                 "database": embedded if embedded not in (None, "running") else "unreachable"},
                                status_code=503, headers={"retry-after": "5"})
        if embedded == "disk full":
            return JSONResponse({"status": "unavailable", "database": "disk full"}, status_code=503,
                                headers={"retry-after": "30"})
        return JSONResponse({"status": "ready"})
