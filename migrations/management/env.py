"""Alembic environment of the management chain.

Run through `tenantry migrate` (app.tenancy.migrate), which hands over a live connection
in `config.attributes["connection"]`; there is no alembic.ini.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from app.db.naming import MANAGEMENT_SCHEMA
from app.models.management import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tenantry migrate`")

# On Citus a schema created while schema-based sharding is on becomes distributed, and the registry
# must stay on the coordinator (its triggers, its joins): created with sharding off for this session.
# On plain PostgreSQL the setting is an unused placeholder.
connection.execute(text("SET citus.enable_schema_based_sharding TO off"))
connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {MANAGEMENT_SCHEMA}"))
connection.execute(text("RESET citus.enable_schema_based_sharding"))
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=MANAGEMENT_SCHEMA,
    include_schemas=True,
)
with context.begin_transaction():
    context.run_migrations()
