"""Alembic environment of the tenant chain, applied to every tenant schema.

Online (`tenantry migrate`): `config.attributes` carries the connection and the schema; the
search_path is pinned to that schema for the transaction, so the scripts never name one.
Offline: the same scripts render unqualified DDL, which provisioning caches and runs inside
a freshly created schema (app.tenancy.ddl).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from app.db.naming import checked_identifier
from app.models.tenant import metadata

config = context.config

if context.is_offline_mode():
    context.configure(
        url="postgresql+psycopg://",
        target_metadata=metadata,
        literal_binds=True,
        # Provisioning runs the DDL inside its own transaction.
        transactional_ddl=False,
    )
    context.run_migrations()
else:
    connection = config.attributes["connection"]
    schema = checked_identifier(config.attributes["schema"])
    connection.execute(text("SELECT set_config('search_path', :s, true)"), {"s": schema})
    context.configure(connection=connection, target_metadata=metadata, version_table_schema=schema)
    with context.begin_transaction():
        context.run_migrations()
