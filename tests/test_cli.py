"""The operator's shell: `tenantry …` run as a real process against the test database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.settings import Settings
from tests.conftest import unique

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(settings: Settings, platform: object) -> object:
    env = {**os.environ, "TENANTRY_DATABASE_URL": str(settings.database_url),
           "TENANTRY_SECRET_KEY": str(settings.secret_key), "TENANTRY_DATA_DIR": str(settings.data_dir),
           "COLUMNS": "200"}

    def tenantry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False)

    return tenantry


def test_create_list_suspend_activate_from_the_shell(run) -> None:  # type: ignore[no-untyped-def]
    domain = unique("cli")
    created = run("tenants", "create", "--domain", domain, "--company", "Shell Co", "--kind", "ENTERPRISE",
                  "--admin-email", f"admin@{domain}.test")
    assert created.returncode == 0, created.stderr
    assert domain in created.stdout
    assert "ENTERPRISE" in created.stdout
    tenant_id = next(word for word in created.stdout.split() if word.startswith("t") and word[1:].isdigit())

    again = run("tenants", "create", "--domain", domain, "--company", "Shell Co",
                "--admin-email", f"admin@{domain}.test")
    assert again.returncode == 2
    assert "already taken" in again.stderr

    listed = run("tenants", "list")
    assert listed.returncode == 0
    assert tenant_id in listed.stdout
    assert "management" in listed.stdout

    suspended = run("tenants", "suspend", tenant_id)
    assert suspended.returncode == 0
    assert "SUSPENDED" in suspended.stdout
    activated = run("tenants", "activate", tenant_id)
    assert activated.returncode == 0
    assert "ACTIVE" in activated.stdout
    missing = run("tenants", "suspend", "t000000000")
    assert missing.returncode == 2
    assert "not found" in missing.stderr


def test_migrate_is_resumable_and_export_schema_matches(run) -> None:  # type: ignore[no-untyped-def]
    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "0 failed" in migrated.stdout
    assert "already current" in migrated.stdout
    # Without a terminal: plain progress lines with the count (and an ETA while it runs) on stderr.
    assert re.search(r"migrate: (\d+)/\1 tenant schemas, 0 failed", migrated.stderr), migrated.stderr
    exported = run("export-schema")
    assert exported.returncode == 0
    assert exported.stdout == (ROOT / "schema.graphql").read_text()


def test_retention_run_from_the_shell(run) -> None:  # type: ignore[no-untyped-def]
    result = run("retention", "run", "--batch-size", "100")
    assert result.returncode == 0, result.stderr
    assert "deleted:" in result.stdout


def test_usage_snapshot_takes_snapshots_and_closes_the_days_before_today(run) -> None:  # type: ignore[no-untyped-def]
    result = run("usage", "snapshot")
    assert result.returncode == 0, result.stderr
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    assert re.search(rf"usage snapshots taken for \d+ tenants; days closed through {yesterday}", result.stdout)


def test_version_json_and_help_for_every_option(run) -> None:  # type: ignore[no-untyped-def]
    import json

    from app.cli import parser

    version = run("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("tenantry ")
    listed = run("tenants", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert any(r["id"] == "management" and r["kind"] == "MANAGEMENT" for r in rows)

    def missing(p: object, path: str) -> list[str]:  # every option of every command has help text
        out = []
        for action in p._actions:  # type: ignore[attr-defined]
            if action.option_strings and action.help is None:
                out.append(f"{path} {action.option_strings[0]}")
            choices = getattr(action, "choices", None)
            for name, sub in (choices.items() if isinstance(choices, dict) else []):
                if hasattr(sub, "_actions"):
                    out += missing(sub, f"{path} {name}")
        return out

    assert missing(parser(), "tenantry") == []


def _fields(type_name: str) -> set[str]:
    """The fields of a type in the committed schema.graphql."""
    block = re.search(rf"^type {type_name}\b[^{{]*\{{(.*?)^\}}", (ROOT / "schema.graphql").read_text(), re.S | re.M)
    assert block is not None, type_name
    return set(re.findall(r"^  ([a-zA-Z]+)\b", block.group(1), re.M))


def test_every_listing_takes_json_named_as_the_graphql_api(run) -> None:  # type: ignore[no-untyped-def]
    import orjson

    domain = unique("clij")
    created = run("tenants", "create", "--domain", domain, "--company", "Json Co", "--admin-email",
                  f"admin@{domain}.test", "--json")
    assert created.returncode == 0, created.stderr
    tenant = orjson.loads(created.stdout)
    assert set(tenant) <= _fields("Tenant"), set(tenant) - _fields("Tenant")
    assert (tenant["domain"], tenant["parentId"]) == (domain, "management")
    for command in (("tenants", "suspend", tenant["id"]), ("tenants", "activate", tenant["id"]), ("tenants", "list")):
        answered = run(*command, "--json")
        assert answered.returncode == 0, answered.stderr
        rows = [orjson.loads(line) for line in answered.stdout.splitlines()]
        assert all(set(row) <= _fields("Tenant") for row in rows)
        assert tenant["id"] in {row["id"] for row in rows}
    exported = run("usage", "export", "--from", "2026-01-01", "--to", "2026-01-02", "--granularity", "total", "--json")
    assert exported.returncode == 0, exported.stderr
    rows = [orjson.loads(line) for line in exported.stdout.splitlines()]
    assert rows
    summary = _fields("TenantUsageSummary") | {"period"}  # the export's own column: the day, month or range of a row
    assert all(set(row) <= summary for row in rows), set(rows[0]) - summary
    for command in (("users", "list"), ("tenants", "placement")):
        answered = run(*command, "--json")
        assert answered.returncode == 0, answered.stderr
        assert all(isinstance(orjson.loads(line), dict) for line in answered.stdout.splitlines())
