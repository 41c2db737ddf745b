"""README.md and docs/ say what is true: every example in them runs against a real server.

- The README's walk (its `sh` blocks, in order) runs in bash against the app behind uvicorn.
- Every `graphql` block in docs/ runs, operation by operation, as the caller its first line names,
  with the variables it declares; none may answer an error.
- Every `sh` and `python` block in docs/ runs with `$TENANTRY`, `$TOKEN`, `$TENANT` (and a device
  token) of a real tenant.
- `text` blocks are synopses and configuration, not examples; a block in another language must be
  listed in NOT_RUN with the reason it cannot run here (skipped with that reason).
- The generated tables (errors, the authorisation matrix) equal their sources; links resolve; the
  README stays a front door (≤ 250 lines).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from graphql import OperationDefinitionNode, parse
from sqlalchemy import text

from app.runtime.platform import Platform
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Api, TenantHandle, World, unique
from tests.test_authorization_matrix import EXPECTED, OPERATIONS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Blocks that cannot run on this machine, by (page, language), and why.
NOT_RUN = {
    ("docs/realtime.md", "js"): "a browser client needing the graphql-ws npm package; its subscription runs "
                                "through a third-party graphql-transport-ws client in tests/test_realtime.py",
    ("docs/changes.md", "text"): "a subscription resumed after a position (a WebSocket client) and a share "
                                 "between two tenants whose ids are the reader's: tests/test_changes.py and "
                                 "tests/test_shares.py run exactly these",
    ("docs/scaling-out.md", "sql"): "Citus cluster setup (make test-citus builds and runs such a cluster)",
    ("docs/frontends.md", "ts"): "excerpts of the console's code (console/src), which tests/test_console_types.py "
                                 "finds there verbatim and type-checks, and tests/test_console.py runs in Chromium",
    ("docs/mqtt.md", "python"): "a device needing a real MQTT broker: tests/test_mqtt.py runs this very block "
                                "against RabbitMQ",
}


@dataclass(frozen=True)
class Block:
    page: str
    language: str
    code: str
    line: int


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    fence, start, language, lines = False, 0, "", list[str]()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```") and not fence:
            fence, start, language, lines = True, number, stripped[3:].strip(), []
        elif stripped == "```" and fence:
            fence = False
            indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
            found.append(Block(str(path.relative_to(ROOT)), language, "\n".join(x[indent:] for x in lines), start))
        elif fence:
            lines.append(line)
    assert not fence, f"{path}: an unclosed code block"
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make run" in readme and "make test" in readme  # noqa: PT018 - both commands, one fact


def test_every_relative_link_resolves() -> None:
    broken = [(str(page.relative_to(ROOT)), target) for page in PAGES
              for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text())
              if not target.startswith(("http://", "https://")) and not (page.parent / target).exists()]
    assert broken == []


def test_every_block_is_run_or_says_why_not() -> None:
    unknown = sorted({(b.page, b.language) for b in ALL if b.language not in ("sh", "graphql", "python", "text")}
                     - set(NOT_RUN))
    assert unknown == [], "add a runner, or a reason to NOT_RUN"
    assert set(NOT_RUN) <= {(b.page, b.language) for b in ALL}


@pytest.mark.parametrize(("page", "language"), sorted(NOT_RUN))
def test_blocks_that_cannot_run_here(page: str, language: str) -> None:
    pytest.skip(f"{page} ({language}): {NOT_RUN[(page, language)]}")


def test_the_access_matrix_on_the_page_is_the_one_the_matrix_test_runs() -> None:
    page = (ROOT / "docs" / "access.md").read_text()
    table = page[page.index("| caller in T |"):page.index("<!-- end matrix -->")].strip().splitlines()
    symbols = {"✓": "allow", "\N{EN DASH}": "FORBIDDEN", "SUSPENDED": "TENANT_SUSPENDED", "401": "UNAUTHENTICATED"}
    assert [c.strip() for c in table[0].strip("|").split("|")][1:] == list(OPERATIONS)
    rows = {cells[0]: tuple(symbols[c] for c in cells[1:])
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert rows == EXPECTED


# --- running them -----------------------------------------------------------------------------------


async def _run(*command: str, env: dict[str, str], cwd: str, seconds: float = 120) -> tuple[int, str, str]:
    """A subprocess awaited on the event loop (the server under test runs on the same loop)."""
    process = await asyncio.create_subprocess_exec(*command, env={**os.environ, **env}, cwd=cwd,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(seconds):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_readme_walk_runs_as_written(server: str) -> None:
    walk = [b.code for b in ALL if b.page == "README.md" and b.language == "sh"]
    assert len(walk) >= 6
    script = "set -euo pipefail\n" + "\n".join(walk)
    with tempfile.TemporaryDirectory() as cwd:
        code, out, err = await _run("bash", "-c", script, cwd=cwd, env={
            "TENANTRY": f"http://{server}", "ADMIN_EMAIL": ADMIN_EMAIL, "ADMIN_PASSWORD": ADMIN_PASSWORD})
    assert code == 0, f"{out}\n{err}"
    assert re.search(r"created tenant t\d+", out), out
    assert '"createMeasurements":1' in out, out
    assert re.search(r'^data: .*"kind":"RAISED".*"type":"overheat"', out, re.M), out
    created = re.search(r"created tenant (t\d+)", out)
    assert created is not None
    assert re.search(rf"^{created.group(1)},", out, re.M), out  # its row in the operator's CSV export
    assert "requestCount" in out, out  # the CSV export's header


@dataclass
class Tenants:
    operator: str
    enterprise: TenantHandle
    tenant: TenantHandle
    target: TenantHandle
    variables: dict[str, Any]


@pytest.fixture
async def tenants(api: Api, world: World, operator_token: str, platform: Platform) -> Tenants:
    enterprise = await world.tenant(kind="ENTERPRISE")
    tenant = await world.tenant(enterprise)
    target = await world.tenant()
    async with platform.db.owner.begin() as conn:  # the tenant's admin may write into the target too
        await conn.execute(text("INSERT INTO tenantry.memberships (user_id, tenant_id, role) SELECT id, :t, 'ADMIN' "
                                "FROM tenantry.users WHERE email = :e"), {"t": target.id, "e": tenant.admin_email})
    made = await api.gql('mutation { group: createGroup(name: "boilers") { id } device: createDevice(input: {name: '
                         '"boiler-0", type: "thermostat"}) { id } }', token=tenant.token, tenant=tenant.id)
    group, device = made.data["group"]["id"], made.data["device"]["id"]
    await api.gql("mutation($g: ID!, $d: ID!) { addDevicesToGroup(groupId: $g, deviceIds: [$d]) }",
                  {"g": group, "d": device}, token=tenant.token, tenant=tenant.id)
    now = datetime.now(UTC)
    variables = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "tenant": tenant.id, "enterprise": enterprise.id,
                 "target": target.id, "device": device, "group": group, "time": now.isoformat(),
                 "since": (now - timedelta(days=1)).isoformat(), "until": (now + timedelta(hours=1)).isoformat(),
                 "from": (now - timedelta(days=30)).date().isoformat(), "to": now.date().isoformat()}
    return Tenants(operator_token, enterprise, tenant, target, variables)


def _caller(block: Block, tenants: Tenants) -> tuple[str | None, str | None]:
    first = block.code.splitlines()[0]
    match = re.fullmatch(r"# caller: (anonymous|operator|enterprise admin|tenant admin)", first)
    assert match, f"{block.page}:{block.line}: a graphql example starts with '# caller: …'"
    return {"anonymous": (None, None), "operator": (tenants.operator, "management"),
            "enterprise admin": (tenants.enterprise.token, tenants.enterprise.id),
            "tenant admin": (tenants.tenant.token, tenants.tenant.id)}[match.group(1)]


async def test_every_graphql_example_in_the_docs_answers_without_errors(api: Api, tenants: Tenants) -> None:
    ran = 0
    for block in (b for b in ALL if b.language == "graphql"):
        token, tenant = _caller(block, tenants)
        for operation in parse(block.code).definitions:
            assert isinstance(operation, OperationDefinitionNode) and operation.name, block  # noqa: PT018
            names = [d.variable.name.value for d in operation.variable_definitions or ()]
            variables = {n: unique("doc") if n == "domain" else tenants.variables[n] for n in names}
            result = await api.gql(block.code, variables, token=token, tenant=tenant, operation=operation.name.value)
            assert not result.errors, f"{block.page}:{block.line} {operation.name.value}: {result.body}"
            ran += 1
    assert ran == sum(len(parse(b.code).definitions) for b in ALL if b.language == "graphql") > 0


async def test_every_shell_and_python_example_in_the_docs_runs(server: str, api: Api, tenants: Tenants) -> None:
    t = tenants.tenant
    device_token = (await api.gql("mutation($d: ID!) { createDeviceToken(deviceId: $d) { token } }",
                                  {"d": tenants.variables["device"]}, token=t.token,
                                  tenant=t.id)).data["createDeviceToken"]["token"]
    env = {"TENANTRY": f"http://{server}", "TOKEN": t.token, "TENANT": t.id, "DEVICE_TOKEN": device_token}
    examples = [b for b in ALL if b.page != "README.md" and b.language in ("sh", "python")
                and (b.page, b.language) not in NOT_RUN]
    assert {b.language for b in examples} == {"sh", "python"}
    with tempfile.TemporaryDirectory() as cwd:
        for block in examples:
            if block.language == "sh":
                code, out, err = await _run("bash", "-c", "set -euo pipefail\n" + block.code, env=env, cwd=cwd)
                assert code == 0, f"{block.page}:{block.line}\n{out}\n{err}"
                assert '"errors"' not in out, f"{block.page}:{block.line}\n{out}"
            else:
                await _run_agent(block, api, t, env, cwd)


async def _run_agent(block: Block, api: Api, t: TenantHandle, env: dict[str, str], cwd: str) -> None:
    """The device agent example takes an operation sent to its device, then exits."""
    agent = asyncio.create_task(_run(sys.executable, "-c", block.code, env=env, cwd=cwd, seconds=60))
    device = (await api.gql("{ devices(first: 1) { edges { node { id } } } }", token=t.token,
                            tenant=t.id)).data["devices"]["edges"][0]["node"]["id"]
    for _ in range(40):  # until the agent has subscribed and taken one
        if agent.done():
            break
        await api.gql('mutation($d: ID!) { createOperation(input: {deviceId: $d, description: "reboot"}) { id } }',
                      {"d": device}, token=t.token, tenant=t.id)
        await asyncio.wait([agent], timeout=0.5)
    code, out, err = await agent
    assert code == 0, f"{block.page}:{block.line}\n{out}\n{err}"
    assert "executing reboot" in out
