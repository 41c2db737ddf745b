"""copyData: exact selection, isolation, authorisation, atomicity (injected and killed), idempotency."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.access.scope import Scope
from app.db.engines import app_database_url, owner_database_url
from app.ids import decode
from app.main import create_app
from app.runtime.platform import Platform
from app.services.audit.records import SYSTEM
from app.services.sharing import copying, jobs
from tests.conftest import Api, TenantHandle, World, nowhere, unique

ROOT = Path(__file__).resolve().parents[1]
COPY = """mutation($i: CopyDataInput!) { copyData(input: $i) { id status error
  counts { devices groups measurements events alarms skipped } } }"""


async def _pair(api: Api, world: World) -> tuple[TenantHandle, TenantHandle]:
    """Two tenants with one ADMIN in common (the copier)."""
    source = await world.tenant()
    created = await api.create_subtenant(world.operator_token, "management", domain=unique("tgt"), company="T",
                                         adminEmail=source.admin_email)
    target_id = created.data["createSubtenant"]["id"]
    return source, TenantHandle(target_id, "", source.admin_email, source.token)


async def _seed(api: Api, t: TenantHandle, name: str, n: int = 5) -> str:
    device = (await api.gql("mutation($n: String!) { createDevice(input: {name: $n, fragments: {fw: \"1\"}}) { id } }",
                            {"n": name}, token=t.token, tenant=t.id)).data["createDevice"]["id"]
    rows = [{"deviceId": device, "time": f"2026-01-0{1 + i % 3}T10:00:0{i}Z", "type": "c", "series": "s",
             "value": float(i)} for i in range(n)]
    await api.gql("mutation($m: [MeasurementInput!]!) { createMeasurements(input: $m) }", {"m": rows},
                  token=t.token, tenant=t.id)
    await api.gql("""mutation($d: ID!) { createEvent(input: {deviceId: $d, time: "2026-01-02T00:00:00Z", type: "e",
                       text: "original"}) { id }
                     raiseAlarm(input: {deviceId: $d, type: "a", severity: MINOR, text: "x"}) { id } }""",
                  {"d": device}, token=t.token, tenant=t.id)
    return str(device)


async def _target_state(api: Api, t: TenantHandle) -> dict[str, Any]:
    devices = (await api.gql("{ devices { edges { node { id name fragments } } } }", token=t.token,
                             tenant=t.id)).data["devices"]["edges"]
    out: dict[str, Any] = {"devices": sorted(d["node"]["name"] for d in devices), "measurements": 0}
    for d in devices:
        page = await api.gql("query($d: ID!) { measurements(deviceId: $d, first: 500) { edges { node { value } } } }",
                             {"d": d["node"]["id"]}, token=t.token, tenant=t.id)
        out["measurements"] += len(page.data["measurements"]["edges"])
    rest = await api.gql("{ events { edges { node { text } } } alarms { edges { node { type } } } }", token=t.token,
                         tenant=t.id)
    out["events"] = [e["node"]["text"] for e in rest.data["events"]["edges"]]
    out["alarms"] = len(rest.data["alarms"]["edges"])
    return out


async def test_copy_takes_exactly_the_selection_and_is_idempotent(api: Api, world: World) -> None:
    source, target = await _pair(api, world)
    a = await _seed(api, source, "a")
    b = await _seed(api, source, "b")
    await _seed(api, source, "not-selected")
    spec = {"sourceTenantId": source.id, "targetTenantId": target.id, "deviceIds": [a, b],
            "include": ["INVENTORY", "MEASUREMENTS", "EVENTS", "ALARMS"],
            "from": "2026-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z"}
    first = await api.gql(COPY, {"i": spec}, token=source.token, tenant=source.id)
    job = first.data["copyData"]
    assert job["status"] == "SUCCEEDED"
    # 5 rows per device over three days; the range keeps days 1 and 2 (4 rows of 5).
    assert job["counts"] == {"devices": 2, "groups": 0, "measurements": 8, "events": 2, "alarms": 0, "skipped": 0}
    state = await _target_state(api, target)
    assert state == {"devices": ["a", "b"], "measurements": 8, "events": ["original", "original"], "alarms": 0}

    again = (await api.gql(COPY, {"i": spec}, token=source.token, tenant=source.id)).data["copyData"]
    assert again["counts"]["devices"] == 0
    assert again["counts"]["measurements"] == 0
    assert again["counts"]["skipped"] == 2 + 8 + 2
    assert await _target_state(api, target) == state

    # New data in the source: SKIP adds just that; OVERWRITE also refreshes what changed.
    await api.gql('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-02T12:00:00Z", '
                  'type: "c", series: "s", value: 99}]) }', {"d": a}, token=source.token, tenant=source.id)
    await api.gql('mutation($d: ID!) { updateDevice(id: $d, input: {name: "a-renamed"}) { id } }', {"d": a},
                  token=source.token, tenant=source.id)
    events = await api.gql("{ events { edges { node { id } } } }", token=source.token, tenant=source.id)
    for edge in events.data["events"]["edges"]:
        await api.gql('mutation($id: ID!) { updateEvent(id: $id, input: {text: "edited"}) { id } }',
                      {"id": edge["node"]["id"]}, token=source.token, tenant=source.id)
    skip = (await api.gql(COPY, {"i": spec}, token=source.token, tenant=source.id)).data["copyData"]
    assert skip["counts"]["measurements"] == 1
    assert (await _target_state(api, target))["devices"] == ["a", "b"]
    overwrite = (await api.gql(COPY, {"i": {**spec, "onConflict": "OVERWRITE"}}, token=source.token,
                               tenant=source.id)).data["copyData"]
    assert overwrite["counts"]["devices"] == 2
    state = await _target_state(api, target)
    assert state["devices"] == ["a-renamed", "b"]
    assert state["measurements"] == 9
    assert sorted(state["events"]) == ["edited", "edited"]


async def test_groups_copy_with_their_subgroups_and_members(api: Api, world: World) -> None:
    source, target = await _pair(api, world)
    site = (await api.gql('mutation { createGroup(name: "site") { id } }', token=source.token,
                          tenant=source.id)).data["createGroup"]["id"]
    room = (await api.gql('mutation($p: ID!) { createGroup(name: "room", parentId: $p) { id } }', {"p": site},
                          token=source.token, tenant=source.id)).data["createGroup"]["id"]
    for name, group in (("in-site", site), ("in-room", room)):
        await api.gql("mutation($n: String!, $g: ID!) { createDevice(input: {name: $n, groupId: $g}) { id } }",
                      {"n": name, "g": group}, token=source.token, tenant=source.id)
    result = await api.gql(COPY, {"i": {"sourceTenantId": source.id, "targetTenantId": target.id, "groupId": site,
                                        "includeSubgroups": True}}, token=source.token, tenant=source.id)
    assert result.data["copyData"]["counts"]["groups"] == 2
    tree = await api.gql("""{ groups { edges { node { name subgroups { edges { node { name
                            devices { edges { node { name } } } } } } devices(includeSubgroups: true) {
                            edges { node { name } } } } } } }""", token=target.token, tenant=target.id)
    top = tree.data["groups"]["edges"][0]["node"]
    assert top["name"] == "site"
    assert sorted(e["node"]["name"] for e in top["devices"]["edges"]) == ["in-room", "in-site"]
    assert top["subgroups"]["edges"][0]["node"]["devices"]["edges"] == [{"node": {"name": "in-room"}}]


async def test_copy_needs_read_on_the_source_and_write_on_the_target(api: Api, world: World) -> None:
    source, target = await _pair(api, world)
    device = await _seed(api, source, "d")
    stranger = await world.tenant()
    spec = {"sourceTenantId": source.id, "targetTenantId": target.id, "deviceIds": [device]}
    assert (await api.gql(COPY, {"i": spec}, token=stranger.token, tenant=stranger.id)).code == "FORBIDDEN"
    into_stranger = {**spec, "targetTenantId": stranger.id}
    assert (await api.gql(COPY, {"i": into_stranger}, token=source.token, tenant=source.id)).code == "FORBIDDEN"
    _, reader = await world.member(source, "READER")
    assert (await api.gql(COPY, {"i": {**spec, "sourceTenantId": source.id, "targetTenantId": source.id}},
                          token=reader, tenant=source.id)).code == "INVALID_INPUT"
    # Ids name devices of the source only: one it lacks fails the whole copy, which writes nothing.
    missing = await api.gql(COPY, {"i": {**spec, "deviceIds": [device, nowhere(source)]}}, token=source.token,
                            tenant=source.id)
    assert missing.code == "NOT_FOUND"
    assert (await _target_state(api, target))["devices"] == []
    # A parent-level user reaches a descendant's data only where it allows FULL access.
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    child_device = await _seed(api, child, "child")
    support_id, support = await world.member(ent, "ADMIN")
    await api.gql("mutation($u: ID!) { setMemberScope(userId: $u, scope: SUBTREE) { scope } }", {"u": support_id},
                  token=ent.token, tenant=ent.id)
    sibling = await world.tenant(ent)
    out_of_child = {"sourceTenantId": child.id, "targetTenantId": sibling.id, "deviceIds": [child_device]}
    assert (await api.gql(COPY, {"i": out_of_child}, token=support, tenant=ent.id)).code == "FORBIDDEN"
    await api.gql("mutation { setParentAccess(policy: FULL) { id } }", token=child.token, tenant=child.id)
    await api.gql("mutation { setParentAccess(policy: FULL) { id } }", token=sibling.token, tenant=sibling.id)
    copied = await api.gql(COPY, {"i": out_of_child}, token=support, tenant=ent.id)
    assert copied.data["copyData"]["counts"]["devices"] == 1


async def test_a_failure_anywhere_leaves_the_target_untouched(api: Api, world: World, platform: Platform) -> None:
    source, target = await _pair(api, world)
    device = local_of(await _seed(api, source, "d"))
    spec = copying.CopySpec(source_tenant=source.id, target_tenant=target.id, device_ids=(device,),
                            include=("INVENTORY", "MEASUREMENTS", "EVENTS", "ALARMS"))
    for step in ("inventory", "measurements", "events", "alarms", "commit"):
        def fail(reached: str, counts: copying.CopyCounts, step: str = step) -> None:
            if reached == step:
                raise RuntimeError(f"injected at {step}")

        with pytest.raises(RuntimeError, match="injected"):
            await copying.run_copy(platform.db.app, spec, source_scope=Scope(), actor=SYSTEM, on_step=fail)
        assert await _target_state(api, target) == {"devices": [], "measurements": 0, "events": [], "alarms": 0}
    async with platform.db.owner.connect() as conn:
        leftovers = (await conn.execute(text(f"SELECT count(*) FROM t_{target.id}.provenance"))).scalar_one()
    assert leftovers == 0


async def test_a_killed_copy_leaves_the_target_untouched_and_its_job_failed(
    api: Api, world: World, platform: Platform
) -> None:
    source, target = await _pair(api, world)
    device = await _seed(api, source, "d", n=20)
    marker = Path(tempfile.mkdtemp(prefix="tnt-kill-")) / "reached"
    url = app_database_url(platform.settings, owner_database_url(platform.settings))
    process = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "tests" / "copy_and_die.py"), url,
                                                   source.id, target.id, device, str(marker), cwd=ROOT,
                                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(600):
            if marker.exists():
                break
            await asyncio.sleep(0.05)
        assert marker.exists(), "the copy never reached its measurements"
        process.send_signal(signal.SIGKILL)
    finally:
        await process.wait()
    assert await _target_state(api, target) == {"devices": [], "measurements": 0, "events": [], "alarms": 0}
    job_id = marker.read_text()
    # Found at once (a restart right after the kill): the dead process's lease is gone. A live
    # job of this process, holding its lease, is left alone.
    live = await jobs.JobLease.take(platform.db.app, uuid.uuid4())
    try:
        await jobs.create_job(platform.db.app, copying.CopySpec(source.id, target.id, (1,)),
                                 requested_by=uuid.UUID(int=0), status="RUNNING", job_id=live.job_id)
        assert await jobs.fail_interrupted(platform.db.app) >= 1
        async with platform.db.owner.connect() as conn:
            alive = (await conn.execute(text("SELECT status FROM tenantry.copy_jobs WHERE id = :j"),
                                        {"j": live.job_id})).scalar_one()
        assert alive == "RUNNING"
    finally:
        await live.release()
    async with platform.db.owner.connect() as conn:
        status = (await conn.execute(text("SELECT status, error FROM tenantry.copy_jobs WHERE id = :j"),
                                     {"j": job_id})).one()
    assert status[0] == "FAILED"
    assert "nothing was written" in status[1]


async def test_large_copies_run_as_jobs_with_progress(api: Api, world: World, platform: Platform) -> None:
    source, target = await _pair(api, world)
    device = await _seed(api, source, "d", n=30)
    small_limit = create_app(platform=dataclasses.replace(platform, settings=platform.settings.with_(
        copy_inline_rows=10)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=small_limit), base_url="http://t") as client:
        jobs = Api(client)
        started = await jobs.gql(COPY, {"i": {"sourceTenantId": source.id, "targetTenantId": target.id,
                                              "deviceIds": [device], "include": ["INVENTORY", "MEASUREMENTS"]}},
                                 token=source.token, tenant=source.id)
        job = started.data["copyData"]
        assert job["status"] in ("QUEUED", "RUNNING", "SUCCEEDED")
        query = "query($id: ID!) { copyJob(id: $id) { status counts { measurements } } }"
        for _ in range(200):
            seen = (await jobs.gql(query, {"id": job["id"]}, token=source.token)).data["copyJob"]
            if seen["status"] == "SUCCEEDED":
                break
            await asyncio.sleep(0.05)
        assert seen == {"status": "SUCCEEDED", "counts": {"measurements": 30}}
        stranger = await world.tenant()
        assert (await jobs.gql(query, {"id": job["id"]}, token=stranger.token)).data["copyJob"] is None
    audit = await api.gql('{ auditLog(filter: {plane: DATA, action: "data."}) { edges { node { action } } } }',
                          token=source.token, tenant=source.id)
    assert "data.copied_out" in {e["node"]["action"] for e in audit.data["auditLog"]["edges"]}
    received = await api.gql('{ auditLog(filter: {plane: DATA, action: "data."}) { edges { node { action } } } }',
                             token=target.token, tenant=target.id)
    assert "data.copied_in" in {e["node"]["action"] for e in received.data["auditLog"]["edges"]}


def local_of(global_id: str) -> int:
    """The row number behind a global id (what the services take)."""
    decoded = decode(global_id)
    assert decoded is not None
    return decoded[2]
