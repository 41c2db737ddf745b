"""Where a GraphQL request's tenant comes from besides the X-Tenant-ID header: the URL.

`/t/<tenant>/graphql` is the same endpoint as `/graphql` with the tenant in the path (docs/frontends.md),
so that a browser client's normalised cache, persisted queries and HTTP caches key by tenant — one client
per tenant cannot answer one tenant's `devices` from another's cache. The path's tenant becomes the
X-Tenant-ID header the access gate reads, and a WebSocket's connection_init tenant; a header or payload
naming another tenant is refused, never silently overridden.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import Scope

_TENANT_PATH = re.compile(r"/t/([A-Za-z0-9_.-]{1,100})/graphql")


def tenant_path(scope: Scope) -> tuple[Scope, bool] | None:
    """`/graphql`, or `/t/<tenant>/graphql`: the same endpoint with the tenant in the URL (docs/frontends.md),
    so that a browser client's cache, persisted queries and HTTP caches key by tenant. The path's tenant
    becomes the X-Tenant-ID header the gate reads (and a WebSocket's connection_init tenant); True: a header
    names another tenant (refused). None: not this endpoint."""
    path = scope["path"]
    if path == "/graphql":
        return scope, False
    matched = _TENANT_PATH.fullmatch(path)
    if matched is None:
        return None
    tenant = matched.group(1)
    headers = [(k, v) for k, v in scope["headers"] if k != b"x-tenant-id"]
    conflict = any(v.decode("latin-1") != tenant for k, v in scope["headers"] if k == b"x-tenant-id")
    return {**scope, "path": "/graphql", "raw_path": b"/graphql", "tenantry.path_tenant": tenant,
            "headers": [*headers, (b"x-tenant-id", tenant.encode())]}, conflict


def credentials(payload: Any, scope: Scope) -> tuple[str | None, str | None, bool]:
    """`Authorization` and `X-Tenant-ID` from a connection_init payload (keys in any case); on
    /t/<tenant>/graphql the URL's tenant, and True when the payload names another one (refused)."""
    path_tenant = scope.get("tenantry.path_tenant")
    if not isinstance(payload, dict):
        return None, path_tenant, False
    lowered = {str(k).lower(): v for k, v in payload.items()}
    headers = lowered.get("headers")
    if isinstance(headers, dict):  # some clients nest them
        lowered.update({str(k).lower(): v for k, v in headers.items() if str(k).lower() not in lowered})
    authorization, given = lowered.get("authorization"), lowered.get("x-tenant-id")
    tenant = given if isinstance(given, str) else None
    conflict = path_tenant is not None and tenant not in (None, path_tenant)
    return authorization if isinstance(authorization, str) else None, path_tenant or tenant, conflict
