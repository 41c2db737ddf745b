"""Prometheus metrics on prometheus_client, in multiprocess mode when several workers serve.

With `tenantry serve --workers N` every worker writes its samples to PROMETHEUS_MULTIPROC_DIR
(set by the serve command) and a scrape of any worker adds them all up, so counters never
appear to go backwards. Label cardinality is capped: the first `max_tenants` tenants and
`max_operations` operation names get their own label, the rest count as "other".

Series (all prefixed tenantry_):
- requests_total{tenant}, device_requests_total{tenant}, errors_total{tenant,code}
- request_duration_seconds{operation,outcome} (histogram; outcome = ok or the first error code)
- requests_in_flight, requests_waiting, db_pool_checked_out, db_pool_capacity (summed over workers)
- database_errors_total{kind} (unavailable, commit_unknown), usage_flushes_total{outcome}
- spare_schemas, copy_jobs{status} (read from the database at scrape time)
"""

from __future__ import annotations

import os
import re
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_OPERATION = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,63}")


class _Capped:
    """The first `limit` values keep their own label; later ones become "other"."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return "other"


class RequestMetrics:
    def __init__(self, *, max_tenants: int, max_operations: int = 200) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._tenant = _Capped(max_tenants)
        self._operation = _Capped(max_operations)
        self._request_children: dict[str, Any] = {}
        self._latency_children: dict[tuple[str | None, str], Any] = {}
        self._pool_refreshed = 0.0
        self.requests = Counter("tenantry_requests", "GraphQL requests by tenant.", ["tenant"], registry=r)
        self.device_requests = Counter("tenantry_device_requests", "Requests made with device tokens, by tenant.",
                                       ["tenant"], registry=r)
        self.errors = Counter("tenantry_errors", "GraphQL errors by tenant and extensions.code.", ["tenant", "code"],
                              registry=r)
        self.latency = Histogram("tenantry_request_duration_seconds", "GraphQL request latency by operation name "
                                 "and outcome.", ["operation", "outcome"], buckets=BUCKETS, registry=r)
        self.in_flight = Gauge("tenantry_requests_in_flight", "GraphQL requests being served.", registry=r,
                               multiprocess_mode="livesum")
        self.pool_checked_out = Gauge("tenantry_db_pool_checked_out", "Application pool connections in use.",
                                      registry=r, multiprocess_mode="livesum")
        self.waiting = Gauge("tenantry_requests_waiting", "Requests waiting for an in-flight slot (a connection).",
                             registry=r, multiprocess_mode="livesum")
        self.pool_capacity = Gauge("tenantry_db_pool_capacity", "Application pool size plus overflow.", registry=r,
                                   multiprocess_mode="livesum")
        self.database_errors = Counter("tenantry_database_errors", "Requests the database could not serve.",
                                       ["kind"], registry=r)
        self.usage_flushes = Counter("tenantry_usage_flushes", "Usage counter flushes by outcome.", ["outcome"],
                                     registry=r)
        self.spare_schemas = Gauge("tenantry_spare_schemas", "Spare tenant schemas ready for provisioning.",
                                   registry=r, multiprocess_mode="mostrecent")
        self.mqtt_messages = Counter("tenantry_mqtt_messages", "MQTT uplinks by outcome (stored, invalid, refused).",
                                     ["outcome"], registry=r)
        self.copy_jobs = Gauge("tenantry_copy_jobs", "Copy jobs by status.", ["status"], registry=r,
                               multiprocess_mode="mostrecent")

    def record(self, tenant_id: str | None, *, device: bool, error_codes: list[str]) -> None:
        label = self._tenant(tenant_id) if tenant_id is not None else "none"
        child = self._request_children.get(label)
        if child is None:  # labels() takes a lock and builds a key each call: done once per label
            child = self._request_children[label] = self.requests.labels(label)
        child.inc()
        if device:
            self.device_requests.labels(label).inc()
        for code in error_codes:
            self.errors.labels(label, code).inc()
            if code == "UNAVAILABLE":
                self.database_errors.labels("unavailable").inc()

    def observe(self, operation: str | None, outcome: str, seconds: float) -> None:
        key = (operation, outcome)
        child = self._latency_children.get(key)
        if child is None:
            name = self._operation(operation) if operation and _OPERATION.fullmatch(operation) else "-"
            child = self.latency.labels(name, outcome)
            if len(self._latency_children) < 10_000:
                self._latency_children[key] = child
        child.observe(seconds)

    def pool_due(self, now: float) -> bool:
        """Whether to refresh the pool gauges (at most every 100 ms: they are read, not counted)."""
        if now - self._pool_refreshed < 0.1:
            return False
        self._pool_refreshed = now
        return True

    def render(self) -> bytes:
        """The text exposition: every worker's samples in multiprocess mode, else this process's."""
        if directory := os.environ.get(MULTIPROCESS_DIR):
            forget_dead_workers(directory)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


_LIVE_GAUGE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def forget_dead_workers(directory: str) -> list[int]:
    """Live gauges of worker processes that died without their shutdown (SIGKILL, OOM), dropped
    from the sums before each scrape: a killed worker of `serve --workers 2` left its in-flight
    requests and its pool's capacity counted for ever. Counters and histograms keep the dead
    worker's counts (they happened). Returns the pids forgotten."""
    dead = set()
    for name in os.listdir(directory):
        match = _LIVE_GAUGE.match(name)
        if match and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    return sorted(dead)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed worker its supervisor has not reaped yet)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # someone else's process: alive
        return True
