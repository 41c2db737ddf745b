"""uvicorn's HTTP protocol with a deadline on request headers (slowloris).

uvicorn closes idle keep-alive connections, but a client that opens a connection and sends its
headers a byte at a time — or nothing at all — holds the connection (and a file descriptor) for
ever: enough of them and the server accepts no one else. Here a request's headers must be
complete within `TENANTRY_HEADER_TIMEOUT` seconds of the connection opening or the request
starting, or the connection is closed. (The body's deadline is the app's: app.http.graphql.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

log = logging.getLogger("tenantry.http")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # Set by `tenantry serve`; a worker process of `serve --workers N` reads its environment.
    header_timeout: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if GuardedHttpToolsProtocol.header_timeout is None:
            GuardedHttpToolsProtocol.header_timeout = Settings.from_env().header_timeout_seconds
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        timeout = self.header_timeout or 0
        if timeout > 0:
            self._header_deadline = self.loop.call_later(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        log.info("closed a connection from %s: no complete request headers within %g s", self.client,
                 self.header_timeout)
        self.transport.close()
