"""The tenant schema's DDL at the head of the tenant chain, rendered once and cached.

Provisioning runs this text inside a new schema instead of replaying every migration
(dozens of Alembic round trips) or cloning a template schema (slow, and it grows with the
catalog). tests/test_tenant_ddl.py proves that it builds exactly what running the chain does.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

from alembic import command

from app.tenancy.alembic_chains import alembic_config, head_revision


@dataclass(frozen=True)
class TenantDDL:
    revision: str
    sql: str


@cache
def tenant_ddl() -> TenantDDL:
    buffer = io.StringIO()
    command.upgrade(alembic_config("tenant", output=buffer), "head", sql=True)
    return TenantDDL(revision=head_revision("tenant"), sql=buffer.getvalue())
