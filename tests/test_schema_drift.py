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


def test_every_dependency_is_locked() -> None:
    """`make` installs requirements.lock: each dependency of pyproject.toml (runtime and dev) must
    be pinned there, at a version its range admits."""
    import re
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [Requirement(r) for r in [*project["dependencies"], *extras["embedded"], *extras["otel"],
                                       *extras["dev"]]]
    locked = {canonicalize_name(m.group(1)): m.group(2) for m in
              re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)$", (root / "requirements.lock").read_text(), re.M)}
    for requirement in wanted:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = locked.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in requirements.lock (run make lock)"
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} but locked {version}"
