"""Rows to frozen records: the dataclass's field names are the selected column names."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def to_record(cls: type[T], row: Any) -> T:
    mapping = row._mapping
    return cls(**{name: mapping[name] for name in cls.__dataclass_fields__})  # type: ignore[attr-defined]
