"""Run by test_copy: start a copy as a job, then hang mid-copy until the test kills the process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from uuid import UUID

from app.access.scope import Scope
from app.db.engines import make_engine
from app.services import copying
from app.services.audit import SYSTEM


async def main(url: str, source: str, target: str, device: str, marker: str) -> None:
    engine = make_engine(url, pool_size=2, max_overflow=0)
    spec = copying.CopySpec(source_tenant=source, target_tenant=target, device_ids=(int(device),),
                            include=("INVENTORY", "MEASUREMENTS"))
    job = await copying.create_job(engine, spec, requested_by=UUID(int=0), status="RUNNING")

    async def hang(step: str, counts: copying.CopyCounts) -> None:
        if step == "measurements":  # the target rows are written, not committed
            await asyncio.to_thread(Path(marker).write_text, str(job))
            await asyncio.sleep(3600)

    await copying.run_copy(engine, spec, source_scope=Scope(), actor=SYSTEM, on_step=hang)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
