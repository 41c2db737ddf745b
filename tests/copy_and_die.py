"""Run by test_copy: start a copy as a job, then hang mid-copy until the test kills the process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from uuid import UUID

from app.access.scope import Scope
from app.db.engines import make_engine
from app.ids import decode
from app.services.audit.records import SYSTEM
from app.services.sharing import copying, jobs


def _local(global_id: str) -> int:
    decoded = decode(global_id)
    assert decoded is not None, global_id
    return decoded[2]


async def main(url: str, source: str, target: str, device: str, marker: str) -> None:
    engine = make_engine(url, pool_size=4, max_overflow=0)  # the lease, the copy, progress updates
    spec = copying.CopySpec(source_tenant=source, target_tenant=target, device_ids=(_local(device),),
                            include=("INVENTORY", "MEASUREMENTS"))
    job: list[UUID] = []

    async def hang(step: str, counts: copying.CopyCounts) -> None:
        if step == "measurements":  # the target rows are written, not committed
            await asyncio.to_thread(Path(marker).write_text, str(job[0]))
            await asyncio.sleep(3600)

    # The server's own job path: a lease, a QUEUED row, the task that runs it.
    job_id, task = await jobs.start_job(engine, spec, source_scope=Scope(), actor=SYSTEM,
                                           requested_by=UUID(int=0), request_id=None, on_step=hang)
    job.append(job_id)
    await task


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
