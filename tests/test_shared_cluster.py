"""Two installations on one PostgreSQL cluster: roles are cluster-wide, so the second one stops
with one clear line instead of taking the first one's roles over; no error shows a password."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.engines import app_role_password
from app.errors import AppError
from app.runtime.platform import Platform
from app.services.tenants.bootstrap import bootstrap
from app.tenancy.migrate import migrate_management


async def test_an_app_role_of_another_installation_is_never_taken_over(platform: Platform) -> None:
    settings = platform.settings
    role = settings.app_role
    async with platform.db.owner.begin() as conn:
        await conn.execute(text(f"COMMENT ON ROLE {role} IS 'tenantry:someone_elses_db'"))
    try:
        with pytest.raises(AppError) as refused:
            await migrate_management(platform.db.owner, settings, app_role_password(settings))
        message = refused.value.message
        assert "someone_elses_db" in message
        assert "TENANTRY_APP_ROLE" in message
        assert "\n" not in message
        assert app_role_password(settings) not in message
    finally:
        async with platform.db.owner.begin() as conn:
            await conn.execute(text(f"COMMENT ON ROLE {role} IS NULL"))
    await migrate_management(platform.db.owner, settings, app_role_password(settings))  # claims it again
    async with platform.db.owner.connect() as conn:
        mark = (await conn.execute(text("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles "
                                        "WHERE rolname = :r"), {"r": role})).scalar_one()
    assert mark.startswith("tenantry:")


async def test_a_second_installation_on_the_cluster_stops_with_one_clear_line(platform: Platform) -> None:
    async with platform.db.owner.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("DROP DATABASE IF EXISTS tenantry_second"))
        await conn.execute(text("CREATE DATABASE tenantry_second"))
    url = make_url(str(platform.settings.database_url)).set(database="tenantry_second")
    second = Platform.create(platform.settings.with_(database_url=url.render_as_string(hide_password=False),
                                                     app_role="tenantry_second_app"))
    try:
        await migrate_management(second.db.owner, second.settings, app_role_password(second.settings))
        with pytest.raises(AppError) as refused:
            await bootstrap(second)
        assert "t_management already exists" in refused.value.message
    finally:
        await second.close()
        async with platform.db.owner.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("DROP DATABASE IF EXISTS tenantry_second"))
            await conn.execute(text("DROP ROLE IF EXISTS tenantry_second_app"))
