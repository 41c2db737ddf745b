"""A pooled connection never carries a transaction (or its role and search_path) to the next checkout."""

from __future__ import annotations

from sqlalchemy import text

from app.db.engines import make_engine
from app.db.transaction import driver_execute
from app.platform import Platform


async def test_an_open_transaction_is_rolled_back_when_its_connection_returns(platform: Platform) -> None:
    engine = make_engine(platform.db.owner.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:  # on the driver, as the request transaction works
            await driver_execute(conn, "BEGIN; SELECT set_config('search_path', 'nowhere', true)")
            raw = await conn.get_raw_connection()
            first = raw.driver_connection
            assert first is not None
            assert (await (await first.execute("SHOW search_path")).fetchone()) == ("nowhere",)
        # Closed inside its transaction (a bug path): the pool's reset rolls it back.
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert raw.driver_connection is first  # the same connection, pool of one
            assert (await conn.execute(text("SHOW search_path"))).scalar_one() != "nowhere"
            status = raw.driver_connection.info.transaction_status
            assert status.name == "IDLE"
    finally:
        await engine.dispose()
