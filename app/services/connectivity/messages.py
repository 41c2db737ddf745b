"""What a device may publish over MQTT, read into the data plane's own records (docs/mqtt.md).

The payload of an uplink is JSON, checked here at the same boundary as GraphQL's inputs (app.inputs):
anything else is INVALID_INPUT naming the field, which the bridge answers on the device's error
topic. The device is the topic's; a payload never names one.

- `up/measurements`: an object `{type, series, value, unit?, time?}`, a list of them, or the
  compact form of one series `{type, series, unit?, values: [[time, value], …]}` (time an ISO 8601
  string or epoch seconds).
- `up/events`: an object `{type, text, time?, attributes?}` or a list of them.
- `up/alarms`: an object `{type, severity, text}` or a list of them.
- `up/operations/<operation id>`: `{status, failureReason?}` — the device reports on an operation it got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from app.errors import InvalidInput
from app.inputs import InputRejected, check_datetime, check_json, check_number, check_string
from app.services.data.alarms import SEVERITIES
from app.services.data.measurements import MAX_BATCH, NewMeasurement
from app.services.data.operations import STATUSES


@dataclass(frozen=True)
class EventUplink:
    time: datetime
    type: str
    text: str
    attributes: dict[str, Any] | None


@dataclass(frozen=True)
class AlarmUplink:
    type: str
    severity: str
    text: str


@dataclass(frozen=True)
class StatusUplink:
    operation_id: str
    status: str
    failure_reason: str | None


@dataclass(frozen=True)
class Uplink:
    """One message's records: of one kind only (the topic's)."""

    measurements: list[NewMeasurement] = field(default_factory=list)
    events: list[EventUplink] = field(default_factory=list)
    alarms: list[AlarmUplink] = field(default_factory=list)
    status: StatusUplink | None = None

_FIELDS = {
    "measurements": ({"type", "series", "value"}, {"unit", "time"}),
    "compact": ({"type", "series", "values"}, {"unit"}),
    "events": ({"type", "text"}, {"time", "attributes"}),
    "alarms": ({"type", "severity", "text"}, set[str]()),
    "operations": ({"status"}, {"failureReason"}),
}


def parse(kind: str, device: str, payload: bytes, now: datetime, operation: str | None = None) -> Uplink:
    """The records a message of `kind` carries for `device` (its global id) — a status report for
    `operation` (the topic's last level) — INVALID_INPUT for anything else."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidInput("the payload is not JSON (docs/mqtt.md shows each topic's messages)") from None
    try:
        check_json(body)
    except InputRejected as exc:
        raise InvalidInput(str(exc)) from None
    if kind == "operations":
        if not operation:
            raise InvalidInput("a status report goes to up/operations/<operation id>")
        return Uplink(status=_status(operation, _object(body, "operations")))
    items = body if isinstance(body, list) else [body]
    if not items:
        raise InvalidInput("an empty list carries nothing")
    if kind == "measurements":
        rows = [m for i, item in enumerate(items) for m in _measurements(item, i, device, now)]
        if len(rows) > MAX_BATCH:
            raise InvalidInput(f"at most {MAX_BATCH} measurements per message", max=MAX_BATCH)
        return Uplink(measurements=rows)
    if len(items) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} {kind} per message", max=MAX_BATCH)
    if kind == "events":
        return Uplink(events=[_event(_object(item, "events", i), i, now) for i, item in enumerate(items)])
    if kind == "alarms":
        return Uplink(alarms=[_alarm(_object(item, "alarms", i), i) for i, item in enumerate(items)])
    raise InvalidInput(f"devices publish measurements, events, alarms or operations, not {kind}")


def _object(value: object, shape: str, index: int | None = None) -> dict[str, Any]:
    where = "" if index is None else f"item {index}: "
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}expected a JSON object")
    required, optional = _FIELDS[shape]
    missing = sorted(required - value.keys())
    if missing:
        raise InvalidInput(f"{where}missing {', '.join(missing)}", field=missing[0])
    unknown = sorted(value.keys() - required - optional)
    if unknown:
        raise InvalidInput(f"{where}unknown field {', '.join(unknown)} (allowed: "
                           f"{', '.join(sorted(required | optional))})", field=unknown[0])
    return value


def _text(value: object, field: str, max_len: int = 100, index: int = 0) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidInput(f"item {index}: {field} must be a string of 1-{max_len} characters", field=field)
    return check_string(value)


def _time(value: object, index: int, now: datetime) -> datetime:
    """ISO 8601 with a zone, or epoch seconds; none given: when the bridge read it."""
    if value is None:
        return now
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return check_datetime(datetime.fromtimestamp(check_number(float(value)), UTC))
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise InputRejected("a time needs a zone (e.g. 2026-01-01T00:00:00Z)")
            return check_datetime(parsed)
    except (InputRejected, ValueError, OverflowError, OSError) as exc:
        raise InvalidInput(f"item {index}: time: {exc}", field="time") from None
    raise InvalidInput(f"item {index}: time must be an ISO 8601 string or epoch seconds", field="time")


def _number(value: object, index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"item {index}: value must be a number", field="value")
    try:
        return check_number(float(value))
    except (InputRejected, OverflowError) as exc:
        raise InvalidInput(f"item {index}: value: {exc}", field="value") from None


def _measurements(item: object, index: int, device: str, now: datetime) -> list[NewMeasurement]:
    compact = isinstance(item, dict) and "values" in item
    body = _object(item, "compact" if compact else "measurements", index)
    type_, series = _text(body["type"], "type", index=index), _text(body["series"], "series", index=index)
    unit = body.get("unit")
    if unit is not None:
        unit = _text(unit, "unit", 20, index)
    if not compact:
        return [NewMeasurement(device_id=device, time=_time(body.get("time"), index, now), type=type_,
                               series=series, value=_number(body["value"], index), unit=unit)]
    points = body["values"]
    if not isinstance(points, list) or not points:
        raise InvalidInput(f"item {index}: values must be a non-empty list of [time, value]", field="values")
    out = []
    for point in points:
        if not isinstance(point, list) or len(point) != 2:
            raise InvalidInput(f"item {index}: each of values is [time, value]", field="values")
        out.append(NewMeasurement(device_id=device, time=_time(point[0], index, now), type=type_, series=series,
                                  value=_number(point[1], index), unit=unit))
    return out


def _event(body: dict[str, Any], index: int, now: datetime) -> EventUplink:
    attributes = body.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise InvalidInput(f"item {index}: attributes must be a JSON object", field="attributes")
    return EventUplink(time=_time(body.get("time"), index, now), type=_text(body["type"], "type", index=index),
                       text=_text(body["text"], "text", 2000, index), attributes=attributes)


def _alarm(body: dict[str, Any], index: int) -> AlarmUplink:
    if body["severity"] not in SEVERITIES:
        raise InvalidInput(f"item {index}: severity must be one of {', '.join(SEVERITIES)}", field="severity")
    return AlarmUplink(type=_text(body["type"], "type", index=index), severity=body["severity"],
                       text=_text(body["text"], "text", 2000, index))


def _status(operation: str, body: dict[str, Any]) -> StatusUplink:
    if body["status"] not in STATUSES[1:]:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES[1:])}", field="status")
    reason = body.get("failureReason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput("failureReason must be a string", field="failureReason")
    return StatusUplink(operation_id=operation, status=body["status"], failure_reason=reason)
