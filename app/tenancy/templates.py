"""Tenant templates: what a new tenant starts with, one JSON file each in tenant_templates/."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from app.errors import InvalidInput

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "tenant_templates"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Option:
    category: str
    key: str
    value: str


@dataclass(frozen=True)
class RoleSeed:
    name: str
    permissions: tuple[str, ...]


@dataclass(frozen=True)
class RetentionSeed:
    data_type: str
    type: str | None
    max_age_days: int


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    options: tuple[Option, ...]
    roles: tuple[RoleSeed, ...] = ()
    retention_rules: tuple[RetentionSeed, ...] = ()


@cache
def load_template(name: str) -> Template:
    """The named template; INVALID_INPUT for an unknown or malformed name."""
    if not _NAME.match(name) or not (TEMPLATES_DIR / f"{name}.json").is_file():
        raise InvalidInput(f"unknown template {name!r}; available: {', '.join(template_names())}",
                           field="template")
    raw = json.loads((TEMPLATES_DIR / f"{name}.json").read_text())
    options = tuple(Option(str(o["category"]), str(o["key"]), str(o["value"])) for o in raw.get("options", []))
    roles = tuple(RoleSeed(str(r["name"]), tuple(r["permissions"])) for r in raw.get("roles", []))
    retention = tuple(RetentionSeed(str(r["dataType"]), r.get("type"), int(r["maxAgeDays"]))
                      for r in raw.get("retentionRules", []))
    return Template(name=name, description=str(raw.get("description", "")), options=options, roles=roles,
                    retention_rules=retention)


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.json"))
