"""The one place where tenant ids become PostgreSQL identifiers.

Schema and role names are derived from the tenant id and validated here; nothing else in
the code base builds an identifier, and no identifier ever comes from user input. Because
the result matches a strict pattern it is safe to inline in DDL and in the routing prefix.
"""

from __future__ import annotations

import re
import secrets

MANAGEMENT_TENANT_ID = "management"
MANAGEMENT_SCHEMA = "tenantry"

_TENANT_ID = re.compile(r"^(management|t[0-9]{9})$")
_SPARE_ID = re.compile(r"^[st][0-9]{9}$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def new_tenant_id() -> str:
    """A fresh id like Cumulocity's: `t` and nine digits (random, so ids reveal no counts)."""
    return "t" + str(secrets.randbelow(900_000_000) + 100_000_000)


def is_tenant_id(value: str) -> bool:
    return bool(_TENANT_ID.match(value))


def tenant_schema(tenant_id: str) -> str:
    """Schema (and role) name of a tenant: `t_<id>`. Raises ValueError for anything malformed."""
    if not _TENANT_ID.match(tenant_id):
        raise ValueError(f"not a tenant id: {tenant_id!r}")
    name = f"t_{tenant_id}"
    assert _IDENT.match(name)
    return name


def spare_schema(spare_id: str) -> str:
    """Schema (and role) name of a spare of the provisioning pool. A spare is made under the id of
    the tenant that will take it (`t…`), so taking it renames nothing; spares of earlier releases
    (`s…`, renamed when taken) are only ever dropped."""
    if not _SPARE_ID.match(spare_id):
        raise ValueError(f"not a spare id: {spare_id!r}")
    return f"t_{spare_id}"


def tenant_role(tenant_id: str) -> str:
    # Same text as the schema: roles and schemas live in different namespaces, and one
    # name makes `\dn+` and `\du` easy to read side by side.
    return tenant_schema(tenant_id)


def checked_identifier(name: str) -> str:
    """Validate a role/schema identifier that comes from configuration (e.g. the app role)."""
    if not _IDENT.match(name):
        raise ValueError(f"not a safe identifier: {name!r}")
    return name
