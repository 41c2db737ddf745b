"""A stop (SIGINT/SIGTERM) asked for before the server listens for signals itself.

`tenantry serve` takes a second or two to import the app and join the database before uvicorn
installs its signal handlers; a signal in that window used to be lost (the server then ran on).
`app.entry` notes such a signal from its first instruction, and the app asks uvicorn to stop as
soon as it is up (`app.main`), so a stop at any moment is a stop.
"""

from __future__ import annotations

import signal
from types import FrameType

_requested: list[int] = []


def stop_requested() -> bool:
    return bool(_requested)


def note_stops() -> None:
    """From now on, SIGINT and SIGTERM are noted (until uvicorn installs its own handlers)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _note)


def _note(signum: int, frame: FrameType | None) -> None:
    _requested.append(signum)
