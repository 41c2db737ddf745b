"""Alembic environment of the management chain.

Run through `tenantry migrate` (app.tenancy.migrate), which hands over a live connection
in `config.attributes["connection"]`; there is no alembic.ini.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from app.models.management import metadata
from app.tenancy.naming import MANAGEMENT_SCHEMA

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tenantry migrate`")

connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {MANAGEMENT_SCHEMA}"))
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=MANAGEMENT_SCHEMA,
    include_schemas=True,
)
with context.begin_transaction():
    context.run_migrations()
