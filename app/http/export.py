"""GET /export/usage.csv: the usage export, streamed, bearer-authenticated, routed like GraphQL.

Query: from, to (dates), granularity=day|month|total, separator, decimal, format=csv|json.
Authorisation is the same as `subtenantUsage`: a tenant's ADMIN exports its subtree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from app.errors import AppError, InvalidInput
from app.http.errors import error_response
from app.runtime.platform import Platform
from app.services.usage.export import ExportOptions, export


def _date(request: Request, name: str) -> date:
    raw = request.query_params.get(name)
    try:
        return date.fromisoformat(raw or "")
    except ValueError as exc:
        raise InvalidInput(f"'{name}' must be a date (YYYY-MM-DD)", field=name) from exc


class UsageExportEndpoint:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    async def handle(self, request: Request) -> Response:
        params = request.query_params
        access = self.platform.gate.request(authorization=request.headers.get("authorization"),
                                            tenant_header=request.headers.get("x-tenant-id"),
                                            request_id=request.state.request_id)
        try:
            routed = await access.routed()
            options = ExportOptions(
                start=_date(request, "from"), end=_date(request, "to"), granularity=params.get("granularity", "day"),
                fmt=params.get("format", "csv"), separator=params.get("separator", ","),
                decimal=params.get("decimal", "."),
            ).check()
            stream = export(self.platform.db.app, routed, options)
            first = await anext(stream)  # authorisation and range errors surface before streaming starts
        except AppError as exc:
            return error_response(exc)
        finally:
            await access.finish(commit=False)

        async def chunks() -> AsyncIterator[bytes]:
            yield first
            async for chunk in stream:
                yield chunk

        media = "application/x-ndjson" if options.fmt == "json" else "text/csv; charset=utf-8"
        extension = "jsonl" if options.fmt == "json" else "csv"
        filename = f"usage-{routed.tenant.domain}-{options.start}-{options.end}.{extension}"
        return StreamingResponse(chunks(), media_type=media,
                                 headers={"content-disposition": f'attachment; filename="{filename}"'})
