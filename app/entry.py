"""The `tenantry` command's first instructions, before anything heavy is imported.

`tenantry serve` takes a second or two to import the app and join the database before uvicorn
installs its signal handlers; a SIGINT or SIGTERM in that window used to be lost (the server
then ran on). Here the serve command notes such a signal from its first instruction, and the
app asks uvicorn to stop as soon as it is up (`app.main`), so a stop at any moment is a stop.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_requested: list[int] = []


def stop_requested() -> bool:
    return bool(_requested)


def _note(signum: int, frame: FrameType | None) -> None:
    _requested.append(signum)


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _note)
    from app.cli import main as cli_main  # the heavy imports, after the handlers

    return cli_main()
