"""A stop (SIGINT/SIGTERM) asked for before the server listens for signals itself.

`tenantry serve` takes a second or two to import the app and join the database before uvicorn
installs its signal handlers; a signal in that window used to be lost (the server then ran on).
`app.entry` notes such a signal from its first instruction, and the app asks uvicorn to stop as
soon as it is up (`app.main`), so a stop at any moment is a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
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


def on_stop_signal(callback: Callable[[], None]) -> None:
    """Call `callback` (on the running loop) when SIGINT or SIGTERM arrives, then whatever handled
    it before — uvicorn's own handler, installed before the app's start-up runs. uvicorn waits for
    open responses to finish before it tells the app (lifespan shutdown), and a streaming response
    (GraphQL over SSE) never finishes by itself: the app has to hear of the stop first. uvicorn
    puts back the handlers it found when it stops, so this lasts as long as the server."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        return
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        before = signal.getsignal(signum)

        def chained(sig: int, frame: FrameType | None, before: object = before) -> None:
            with contextlib.suppress(RuntimeError):  # that loop has closed (an app served and gone)
                loop.call_soon_threadsafe(callback)
            if callable(before):
                before(sig, frame)

        signal.signal(signum, chained)
