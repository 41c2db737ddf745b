"""schema.graphql is generated from the code and committed; it must not drift."""

from __future__ import annotations

from pathlib import Path

from app.graphql.schema import build_schema

ROOT = Path(__file__).resolve().parents[1]


def test_committed_schema_matches_the_code() -> None:
    committed = (ROOT / "schema.graphql").read_text()
    generated = build_schema().as_str() + "\n"
    assert committed == generated, "schema.graphql is stale: run `make schema` and commit it"


def test_the_fixed_api_names_exist() -> None:
    """The names in shared/API.md that frontends rely on (those built so far)."""
    sdl = (ROOT / "schema.graphql").read_text()
    for name in ("login(", "refreshToken(", "logout(", "me:", "tenant:", "tenants(", "tenantById(",
                 "createSubtenant(", "updateTenant(", "suspendTenant(", "activateTenant(", "deleteTenant(",
                 "createDevice(", "devices(", "device(", "type AuthPayload", "enum TenantKind", "enum TenantStatus"):
        assert name in sdl, name
