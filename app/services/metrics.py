"""Prometheus metrics per tenant, with a cap on label cardinality.

The first `max_tenants` tenants seen get their own label; the rest are counted as
tenant="other", so a platform with a million tenants cannot blow up the scraper.
"""

from __future__ import annotations

from collections import Counter


class RequestMetrics:
    def __init__(self, *, max_tenants: int) -> None:
        self._max = max_tenants
        self._labels: set[str] = set()
        self.requests: Counter[str] = Counter()
        self.device_requests: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()

    def _label(self, tenant_id: str | None) -> str:
        if tenant_id is None:
            return "none"
        if tenant_id in self._labels:
            return tenant_id
        if len(self._labels) < self._max:
            self._labels.add(tenant_id)
            return tenant_id
        return "other"

    def record(self, tenant_id: str | None, *, device: bool, error_codes: list[str]) -> None:
        label = self._label(tenant_id)
        self.requests[label] += 1
        if device:
            self.device_requests[label] += 1
        for code in error_codes:
            self.errors[(label, code)] += 1

    def render(self) -> str:
        lines = ["# HELP tenantry_requests_total GraphQL requests by tenant.",
                 "# TYPE tenantry_requests_total counter"]
        lines += [f'tenantry_requests_total{{tenant="{t}"}} {n}' for t, n in sorted(self.requests.items())]
        lines += ["# HELP tenantry_device_requests_total Requests made with device tokens, by tenant.",
                  "# TYPE tenantry_device_requests_total counter"]
        lines += [f'tenantry_device_requests_total{{tenant="{t}"}} {n}'
                  for t, n in sorted(self.device_requests.items())]
        lines += ["# HELP tenantry_errors_total GraphQL errors by tenant and extensions.code.",
                  "# TYPE tenantry_errors_total counter"]
        lines += [f'tenantry_errors_total{{tenant="{t}",code="{c}"}} {n}' for (t, c), n in sorted(self.errors.items())]
        return "\n".join(lines) + "\n"
