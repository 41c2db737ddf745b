"""Applying devices' MQTT messages through the data plane's use cases (app.services.data_plane):
the same limits, metering, audit and change log as the GraphQL mutations a device would call."""

from __future__ import annotations

from collections.abc import Sequence

from app.services import data_plane
from app.services.connectivity.messages import Uplink
from app.services.data.measurements import MAX_BATCH


async def apply(plane: data_plane.Plane, device: str, uplinks: Sequence[Uplink]) -> None:
    """One device's messages, in one transaction: measurements of every message go in COPY batches
    (ingest is per batch, not per row), the rest one by one in the order they came."""
    rows = [m for u in uplinks for m in u.measurements]
    for start in range(0, len(rows), MAX_BATCH):
        await data_plane.ingest_measurements(plane, rows[start:start + MAX_BATCH])
    for uplink in uplinks:
        for event in uplink.events:
            await data_plane.record_event(plane, device_id=device, time=event.time, type=event.type, text=event.text,
                                          attributes=event.attributes)
        for alarm in uplink.alarms:
            await data_plane.raise_alarm(plane, device_id=device, type=alarm.type, severity=alarm.severity,
                                         text=alarm.text)
        if uplink.status is not None:
            await data_plane.change_operation_status(plane, uplink.status.operation_id, uplink.status.status,
                                                     uplink.status.failure_reason)
