"""The compiled read path answers exactly as the generic path does.

A differential test: a corpus of documents generated over the compiled read fields (nesting,
aliases, named and inline fragments, @skip/@include with variables, pagination edges,
filters, empty results, nulls, unknown and out-of-scope ids, malformed cursors and
arguments the generic path refuses), plus the README's examples, runs on both paths under
several callers (ADMIN, READER, group-scoped, parent-level FULL, device token), before and
after writes, and the responses must be equal: status, data, errors and codes, with the
order of keys.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from graphql import get_named_type, is_leaf_type
from sqlalchemy import text
from starlette.applications import Starlette

from app.db.transaction import libpq_connection, simple_query
from app.graphql.engine import sql_json
from app.graphql.engine.sql_pages import page_rows
from app.graphql.schema import build_schema
from app.http.graphql import GraphQLEndpoint
from app.ids import encode
from app.runtime.platform import Platform
from app.services.data.timeseries import encode_time_cursor
from app.services.pagination import encode_cursor
from app.settings import Settings
from bench.common import generic_path
from tests.conftest import Api, TenantHandle, World, nowhere

READ_PATH = "tenantry-read-path"


def canonical(value: Any) -> Any:
    """JSON with the order of keys kept (dict equality ignores it)."""
    if isinstance(value, dict):
        return [(k, canonical(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


async def post(http: httpx.AsyncClient, token: str, tenant: str, query: str,
               variables: dict[str, Any]) -> httpx.Response:
    return await http.post("/graphql", json={"query": query, "variables": variables},
                           headers={"authorization": f"Bearer {token}", "x-tenant-id": tenant,
                                    "accept": "application/graphql-response+json"})


async def both(http: httpx.AsyncClient, app: Starlette, token: str, tenant: str, query: str,
               variables: dict[str, Any]) -> bool:
    """Run on both paths, assert the same answer; whether the compiled path answered."""
    compiled = await post(http, token, tenant, query, variables)
    with generic_path(app):
        generic = await post(http, token, tenant, query, variables)
    assert READ_PATH not in generic.headers
    context = f"\n{query}\n{variables}\ncompiled: {compiled.text[:2000]}\ngeneric:  {generic.text[:2000]}"
    assert compiled.status_code == generic.status_code, context
    mine, theirs = orjson.loads(compiled.content), orjson.loads(generic.content)
    if mine.get("data", 0) is None and theirs.get("data", 0) is None and "errors" in mine and "errors" in theirs:
        # Several non-null roots failing: graphql-core reports the ones that fail before `data` is
        # nulled and drops the rest, so which depends on what the gate had already looked up (the
        # compiled path's checks before falling back, or a warm cache on the generic path alone).
        assert all(e["extensions"]["code"] not in ("INTERNAL", None) for e in mine["errors"] + theirs["errors"])
        return False
    assert canonical(mine) == canonical(theirs), context
    return compiled.headers.get(READ_PATH) in ("compiled", "partly compiled")


# --- the corpus -------------------------------------------------------------------------------------

# GraphQL string contents: a quote, an escaped backslash and LIKE's wildcards go in as literals.
NAME_PARTS = ["d-", "EAST", "%", "_", "zz", "it's", "\\\\", "%%"]
SCHEMA = build_schema()._schema


def leaves(type_name: str) -> list[str]:
    """Every leaf field of a compiled type, from the schema itself (and __typename): a field added
    to a type is in the corpus at once."""
    fields = SCHEMA.type_map[type_name].fields  # type: ignore[attr-defined]
    return [name for name, field in fields.items() if is_leaf_type(get_named_type(field.type))] + ["__typename"]


ALARM_FIELDS = leaves("Alarm")
TENANT_FIELDS = leaves("Tenant")
USAGE_DAY_FIELDS = leaves("UsageDay")
DEVICE_LEAVES = leaves("Device")
GROUP_LEAVES = leaves("Group")


class Generator:
    def __init__(self, rng: random.Random, ids: dict[str, str], tenants: tuple[str, ...] = ()) -> None:
        self.rng = rng
        self.ids = ids
        self.tenants = tenants  # ids for tenantById: own, parent, unknown
        self.variables: dict[str, Any] = {}
        self.definitions: dict[str, str] = {}
        self.fragments: dict[str, str] = {}
        self._aliases = 0

    def name(self, field: str) -> str:
        if self.rng.random() < 0.25:
            self._aliases += 1
            return f"a{self._aliases}: {field}"
        return field

    def directive(self) -> str:
        roll = self.rng.random()
        if roll < 0.12:
            self.variables["show"] = self.rng.random() < 0.5
            self.definitions["show"] = "Boolean!"
            return " @include(if: $show)"
        if roll < 0.2:
            self.variables["hide"] = self.rng.random() < 0.5
            self.definitions["hide"] = "Boolean!"
            return " @skip(if: $hide)"
        if roll < 0.23:
            return " @include(if: false)"
        return ""

    def leaves(self, names: list[str]) -> list[str]:
        return [self.name(f) + self.directive()
                for f in self.rng.sample(names, self.rng.randint(1, min(5, len(names))))]

    def group(self, depth: int = 0) -> str:
        parts = self.leaves(GROUP_LEAVES)
        if depth < 1 and self.rng.random() < 0.3:
            args = self.paging()
            if self.rng.random() < 0.4:
                args.append(f"includeSubgroups: {self.rng.choice(['true', 'false'])}")
            parts.append(f"{self.name('devices')}{self._args(args)} {{ {self.connection(self.device(depth + 1))} }}")
        if depth < 1 and self.rng.random() < 0.2:
            args = self.paging()
            parts.append(f"{self.name('subgroups')}{self._args(args)} {{ {self.connection(self.group(depth + 1))} }}")
        return " ".join(parts)

    def me(self) -> str:
        user = f"user {{ {' '.join(self.leaves(['id', 'email']))} }}"
        tenant = " ".join(self.leaves(TENANT_FIELDS))
        if self.rng.random() < 0.2:  # a Tenant field with no translation: `me` is executed
            tenant += " limits { maxDevices deviceCount }"
        membership = " ".join(self.rng.sample([f"tenant {{ {tenant} }}", "role", "scope", user],
                                              self.rng.randint(1, 4)))
        return " ".join(self.rng.sample([user, f"memberships {{ {membership} }}"], self.rng.randint(1, 2)))

    def device(self, depth: int = 0) -> str:
        parts = self.leaves(DEVICE_LEAVES)
        rng = self.rng
        if depth < 2 and rng.random() < 0.3:
            parts.append(f"{self.name('parent')} {{ {self.device(depth + 1)} }}")
        if depth < 2 and rng.random() < 0.25:
            first = rng.choice(["", "", "(first: 1)", "(first: 0)", "(first: 2)"] * 4 + ["(first: 501)"])
            parts.append(f"{self.name('children')}{first}{self.directive()} {{ {self.device(depth + 1)} }}")
        if rng.random() < 0.25:
            parts.append(f"{self.name('groups')} {{ {self.group(depth + 1)} }}")
        if rng.random() < 0.25:
            parts.append(f"{self.name('externalIds')} {{ {' '.join(rng.sample(['type', 'value'], 2))} }}")
        if rng.random() < 0.15:
            parts.append(f"... on Device{self.directive()} {{ {' '.join(self.leaves(DEVICE_LEAVES))} }}")
        if rng.random() < 0.15:
            self.fragments["DeviceBits"] = "fragment DeviceBits on Device { id name createdAt }"
            parts.append("...DeviceBits")
        if rng.random() < 0.2:
            first = rng.choice(["", "(first: 1)", "(first: 0)", "(status: [ACTIVE])", "(status: [], first: 2)",
                                "(first: 101)"])
            parts.append(f"{self.name('alarms')}{first} {{ {' '.join(self.leaves(ALARM_FIELDS))} }}")
        if rng.random() < 0.03:  # not compiled: the whole operation takes the generic path
            parts.append("tenantTemplate: __typename")
        rng.shuffle(parts)
        return " ".join(parts)

    def connection(self, node: str) -> str:
        rng = self.rng
        parts = []
        if rng.random() < 0.9:
            edge = [self.name("node") + f" {{ {node} }}"]
            if rng.random() < 0.5:
                edge.append(self.name("cursor"))
            if rng.random() < 0.1:
                edge.append("__typename")
            parts.append(f"{self.name('edges')} {{ {' '.join(edge)} }}")
        if rng.random() < 0.5:
            info = rng.sample(["hasNextPage", "endCursor", "__typename"], rng.randint(1, 3))
            parts.append(f"{self.name('pageInfo')} {{ {' '.join(info)} }}")
        if rng.random() < 0.4 or not parts:
            parts.append(self.name("totalCount"))
        if rng.random() < 0.1:
            parts.append("__typename")
        rng.shuffle(parts)
        return " ".join(parts)

    def paging(self) -> list[str]:
        rng = self.rng
        args = []
        if rng.random() < 0.7:
            bad = rng.random() < 0.05  # refused by the generic path's page_size: both answer alike
            args.append(f"first: {rng.choice([501, -1] if bad else [0, 1, 2, 3, 50, 500])}")
        if rng.random() < 0.4:
            bad = rng.random() < 0.05
            self.variables["after"] = rng.choice(["zzz", encode_cursor("x")] if bad else [
                encode_cursor(self.ids[rng.choice(sorted(self.ids))]), encode_cursor(0), None])
            self.definitions["after"] = "String"
            args.append("after: $after")
        return args

    def root(self) -> str:
        rng = self.rng
        kind = rng.choice(["device", "device", "devices", "devices", "devices", "group", "groups", "alarms",
                           "events", "operations", "tenant", "usage", "measurements", "measurements", "series",
                           "tenantById", "me", "me", "executed", "executed"])
        if kind == "me":
            return f"{self.name('me')} {{ {self.me()} }}"
        if kind == "executed":  # root fields only execution answers: mixed with compiled ones
            return self.name(rng.choice(GENERIC_ROOTS))
        if kind == "tenantById":
            self.variables["tid"] = rng.choice([*self.tenants, "t999999999", "nope"])
            self.definitions["tid"] = "ID!"
            return f"{self.name('tenantById')}(id: $tid) {{ {' '.join(self.leaves(TENANT_FIELDS))} }}"
        if kind == "series":
            device = rng.choice([self.ids["gw"], self.ids["d-east"], self.ids["d-west"], "abc"])
            span = rng.choice(['from: "2026-01-01T00:00:00Z", to: "2026-01-02T00:00:00Z"',
                               'from: "2026-01-01T00:00:00Z", to: "2026-01-01T00:00:03Z", interval: MINUTE',
                               'from: "2026-01-02T00:00:00Z", to: "2026-01-01T00:00:00Z"',
                               'from: "2020-01-01T00:00:00Z", to: "2026-01-01T00:00:00Z", interval: MINUTE'])
            extra = rng.choice(["", ', type: "c"', ', series: "s2"'])
            fields = " ".join(self.leaves(leaves("SeriesPoint")))
            return f'{self.name("measurementSeries")}(deviceId: "{device}", {span}{extra}) {{ {fields} }}'
        if kind == "tenant":
            return f"{self.name('tenant')} {{ {' '.join(self.leaves(TENANT_FIELDS))} }}"
        if kind == "usage":
            span = rng.choice(['from: "2026-03-01", to: "2026-03-04"', 'from: "2026-03-04", to: "2026-03-01"'])
            return f"{self.name('usage')}({span}) {{ {' '.join(self.leaves(USAGE_DAY_FIELDS))} }}"
        if kind == "device":
            self.variables["id"] = rng.choice([*self.ids.values(), "999999", "abc", "-1", "0"])
            self.definitions["id"] = "ID!"
            return f"{self.name('device')}(id: $id) {{ {self.device()} }}"
        if kind == "group":
            return f'{self.name("group")}(id: "{rng.choice([self.ids["east"], self.ids["west"], "77777"])}") ' \
                   f"{{ {self.group()} }}"
        args = self.paging()
        if kind in ("alarms", "events", "operations"):
            return self.data(kind, args)
        if kind == "groups":
            if rng.random() < 0.3:
                args.append(f'parentId: "{rng.choice([self.ids["east"], self.ids["east"], "x"])}"')
            return f"{self.name('groups')}{self._args(args)} {{ {self.connection(self.group())} }}"
        if rng.random() < 0.5:
            args.append(f"filter: {self.filter()}")
        return f"{self.name('devices')}{self._args(args)} {{ {self.connection(self.device())} }}"

    def data(self, kind: str, args: list[str]) -> str:
        rng = self.rng
        device = rng.choice([self.ids["gw"], self.ids["d-west"], self.ids["d-east"]] * 3 + ["abc", "999999"])
        if kind == "measurements":  # deviceId required; out of scope or unknown: NOT_FOUND
            args.append(f'deviceId: "{device}"')
            options = [f'type: "{rng.choice(["c", "t"])}"', f'series: "{rng.choice(["s1", "s2"])}"',
                       f'from: "{rng.choice(["2026-01-01T00:00:01Z", "2026-01-01T00:00:00.000005+00:00"])}"',
                       f'to: "{rng.choice(["2026-01-01T00:00:04Z", "2027-01-01T00:00:00Z", "2025-01-01T00:00:00Z"])}"']
            args += rng.sample(options, rng.randint(0, 2))
        if kind in ("events", "measurements") and "after" in self.variables and rng.random() < 0.7:
            self.variables["after"] = rng.choice([encode_time_cursor(datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC), 3),
                                                  encode_time_cursor(datetime(2026, 1, 1, 0, 0, 5, 5, UTC), 1)])
        if kind == "alarms":
            options = [f'deviceId: "{device}"', f"status: [{rng.choice(['ACTIVE', 'CLEARED', 'ACKNOWLEDGED'])}]",
                       f"severity: {rng.choice(['MAJOR', '[MINOR, CRITICAL]', '[]'])}", f'type: "{rng.choice("xyz")}"']
            args.append("filter: {" + ", ".join(rng.sample(options, rng.randint(0, 3))) + "}")
            fields = leaves("Alarm")
        elif kind == "events":
            options = [f'deviceId: "{device}"', f'type: "{rng.choice(["e", "f"])}"',
                       f'from: "{rng.choice(["2026-01-01T00:00:01Z", "2026-01-01T00:00:00.000005+00:00"])}"',
                       f'to: "{rng.choice(["2026-01-01T00:00:04Z", "2027-01-01T00:00:00Z", "2025-01-01T00:00:00Z"])}"']
            args += rng.sample(options, rng.randint(0, 3))
            fields = leaves("Event")
        elif kind == "measurements":
            fields = leaves("Measurement")
        else:
            options = [f'deviceId: "{device}"', f"status: {rng.choice(['PENDING', 'FAILED', 'SUCCESSFUL'])}"]
            args += rng.sample(options, rng.randint(0, 2))
            fields = leaves("Operation")
        return f"{self.name(kind)}{self._args(args)} {{ {self.connection(' '.join(self.leaves(fields)))} }}"

    def filter(self) -> str:
        rng = self.rng
        options = [f'type: "{rng.choice(["sensor", "gateway", "none"])}"',
                   f'nameContains: "{rng.choice(NAME_PARTS)}"',
                   f'groupId: "{rng.choice([self.ids["east"], self.ids["west"], self.ids["east-a"], "abc"])}"',
                   "includeSubgroups: true",
                   f'parentId: "{self.ids["gw"]}"',
                   'fragments: {fw: {version: "2"}}', 'fragments: {fw: {version: "2"}}', "fragments: [1]",
                   f'hasFragment: "{rng.choice(["fw", "c8y_Position"])}"']
        return "{" + ", ".join(rng.sample(options, rng.randint(0, 3))) + "}"

    @staticmethod
    def _args(args: list[str]) -> str:
        return f"({', '.join(args)})" if args else ""

    def document(self) -> tuple[str, dict[str, Any]]:
        roots = [self.root() for _ in range(self.rng.choice([1, 1, 1, 2, 3]))]
        if self.rng.random() < 0.1:
            roots.append("__typename")
        definitions = ", ".join(f"${k}: {v}" for k, v in self.definitions.items())
        head = f"query Q({definitions})" if definitions else "query Q"
        return " ".join([f"{head} {{ {' '.join(roots)} }}", *self.fragments.values()]), self.variables


GENERIC_ROOTS = ["roles { name builtin }", "members(first: 2) { totalCount edges { node { role } } }",
                 'deviceByExternalId(value: "SN-1") { id name }', "apiTokens { name }",
                 "tenant { id limits { maxDevices } }"]

README_EXAMPLES = [
    "{ devices(first: 10) { totalCount edges { cursor node { id name type fragments } } "
    "pageInfo { hasNextPage endCursor } } }",
    'query($id: ID!) { device(id: $id) { id name type owner fragments createdAt updatedAt } }',
    "{ groups { edges { node { name } } } }",
]


async def _setup(api: Api, world: World) -> tuple[TenantHandle, TenantHandle, dict[str, str]]:
    parent = await world.tenant(kind="ENTERPRISE")
    t = await world.tenant(parent)
    await api.gql("mutation { setParentAccess(policy: FULL) { parentAccess } }", token=t.token, tenant=t.id)
    ids: dict[str, str] = {}
    for name, group_parent in (("east", None), ("east-a", "east"), ("west", None)):
        result = await api.gql("mutation($n: String!, $p: ID) { createGroup(name: $n, parentId: $p) { id } }",
                               {"n": name, "p": ids.get(group_parent) if group_parent else None},
                               token=t.token, tenant=t.id)
        ids[name] = result.data["createGroup"]["id"]
    devices: list[tuple[str, dict[str, Any]]] = [
        ("gw", {"type": "gateway", "groupId": ids["east"], "externalId": "SN-1",
                "fragments": {"fw": {"version": "2"}, "c8y_Position": {"lat": 1.5, "lng": -0.25}}}),
        ("d-east", {"type": "sensor", "groupId": ids["east"], "parent": "gw",
                    "fragments": {"ü": 'ö "q"', "n": None}}),
        ("d-east-a", {"type": "sensor", "groupId": ids["east-a"], "parent": "gw"}),
        ("d-west", {"groupId": ids["west"], "fragments": {"fw": {"version": "1"}, "list": [1, 2.5, "x"]}}),
        ("d-none", {"type": "sensor", "externalId": "SN-2"}),
        ("it's \\ 50%_off", {"type": "it's"}),  # quotes, a backslash and LIKE's wildcards, as literals
    ]
    for name, fields in devices:
        parent_name = fields.pop("parent", None)
        if parent_name:
            fields["parentId"] = ids[parent_name]
        result = await api.gql("mutation($i: CreateDeviceInput!) { createDevice(input: $i) { id } }",
                               {"i": {"name": name, **fields}}, token=t.token, tenant=t.id)
        ids[name] = result.data["createDevice"]["id"]
    await api.gql('mutation($d: ID!) { addExternalId(deviceId: $d, type: "imei", value: "35-1") { value } }',
                  {"d": ids["gw"]}, token=t.token, tenant=t.id)
    for n, name in enumerate(("gw", "d-east", "d-west", "d-none", "gw")):
        d = ids[name]
        made = await api.gql("""mutation($d: ID!, $t: DateTime!, $s: AlarmSeverity!, $y: String!) {
            raiseAlarm(input: {deviceId: $d, type: $y, severity: $s, text: "it's hot"}) { id }
            createEvent(input: {deviceId: $d, time: $t, type: "e", text: "t", attributes: {k: [1, {z: null}]}}) { id }
            other: createEvent(input: {deviceId: $d, time: $t, type: "f", text: "u"}) { id }
            createOperation(input: {deviceId: $d, description: "op", payload: {cmd: "reboot"}}) { id }
            createMeasurements(input: [{deviceId: $d, time: $t, type: "c", series: "s1", value: 1.5, unit: "C"},
                                       {deviceId: $d, time: $t, type: "t", series: "s2", value: 2},
                                       {deviceId: $d, time: "2026-01-01T00:00:03Z", type: "c", series: "s1",
                                        value: -1e-7}]) }""",
                             {"d": d, "t": f"2026-01-01T00:00:0{n}.{n * 5:06d}Z", "s": ["MAJOR", "MINOR"][n % 2],
                              "y": "xyz"[n % 3]}, token=t.token, tenant=t.id)
        if n % 2:
            await api.gql('mutation($a: ID!) { updateAlarmStatus(id: $a, status: CLEARED) { id } }',
                          {"a": made.data["raiseAlarm"]["id"]}, token=t.token, tenant=t.id)
            await api.gql('mutation($o: ID!) { updateOperationStatus(id: $o, status: EXECUTING) { id } }',
                          {"o": made.data["createOperation"]["id"]}, token=t.token, tenant=t.id)
            await api.gql('mutation($o: ID!) { updateOperationStatus(id: $o, status: FAILED, failureReason: "no") '
                          "{ id } }", {"o": made.data["createOperation"]["id"]}, token=t.token, tenant=t.id)
    return parent, t, ids


async def test_compiled_and_generic_paths_answer_alike(api: Api, world: World, http: httpx.AsyncClient,
                                                      app: Starlette, platform: Platform,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    parent, t, ids = await _setup(api, world)
    _, reader = await world.member(t, "READER")
    _, scoped = await world.member(t, "MANAGER", group_ids=[ids["east"]])
    device_token = (await api.gql("mutation($d: ID!) { createDeviceToken(deviceId: $d) { token } }",
                                  {"d": ids["d-east"]}, token=t.token, tenant=t.id)).data["createDeviceToken"]["token"]
    _, parent_level = await world.subtree_admin(parent)  # reaches t: its parentAccess is FULL
    async with platform.db.owner.begin() as conn:  # usage on two of the days `usage` asks for
        await conn.execute(text("INSERT INTO tenantry.usage_daily (tenant_id, day, request_count, device_count, "
                                "storage_size, events_updated_count) VALUES (:t, '2026-03-02', 7, 3, 8192, 2), "
                                "(:t, '2026-03-04', 5000000000, 4, 0, 1)"), {"t": t.id})
    callers = {"ADMIN": t.token, "READER": reader, "group-scoped": scoped, "parent-level FULL": parent_level,
               "device token": device_token}
    rng = random.Random(15)
    answered = total = 0
    for round_ in range(2):
        documents = [*((q, {"id": ids["d-east"]} if "$id" in q else {}) for q in README_EXAMPLES),
                     *(Generator(rng, ids, (t.id, parent.id)).document() for _ in range(70))]
        for query, variables in documents:
            for token in callers.values():
                answered += await both(http, app, token, t.id, query, variables)
                total += 1
        if round_ == 0:  # writes between the rounds: the compiled path reads what was committed
            await api.gql('mutation($d: ID!) { updateDevice(id: $d, input: {name: "renamed", fragments: {fw: '
                          '{version: "2"}}}) { id } }', {"d": ids["d-west"]}, token=t.token, tenant=t.id)
            await api.gql("mutation($d: ID!) { deleteDevice(id: $d) }", {"d": ids["d-east-a"]}, token=t.token,
                          tenant=t.id)
            created = await api.gql('mutation($g: ID!) { createDevice(input: {name: "late", groupId: $g}) { id } }',
                                    {"g": ids["east-a"]}, token=t.token, tenant=t.id)
            ids["late"] = created.data["createDevice"]["id"]
    # Much of the corpus is compiled; the rest (a device token reading devices, bad arguments, an
    # unknown device's measurements) fell back, and answered alike all the same.
    assert answered > total * 0.4, (answered, total)
    # A loader's batch that failed after its request ended (a sibling's error cancelled the
    # waiters) is no lost error: asyncio logged one per future before SharedLoader marked it seen.
    gc.collect()
    lost = caplog.text.count("Future exception was never retrieved")
    assert lost == 0


async def test_compiled_reads_stay_in_the_routed_tenant(api: Api, world: World, http: httpx.AsyncClient) -> None:
    a, b = await world.tenant(), await world.tenant()
    created = await api.gql('mutation { createDevice(input: {name: "mine", externalId: "A-1"}) { id } }',
                            token=a.token, tenant=a.id)
    device_id = created.data["createDevice"]["id"]
    query = "query($id: ID!) { device(id: $id) { id name externalIds { value } } devices { totalCount " \
            "edges { node { id name } } } }"
    own = await post(http, a.token, a.id, query, {"id": device_id})
    assert own.headers[READ_PATH] == "compiled"
    assert orjson.loads(own.content)["data"]["device"]["externalIds"] == [{"value": "A-1"}]
    other = await post(http, b.token, b.id, query, {"id": device_id})
    assert other.headers[READ_PATH] == "compiled"
    assert orjson.loads(other.content) == {"data": {"device": None, "devices": {"totalCount": 0, "edges": []}}}
    await api.gql('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", '
                  'type: "c", series: "s", value: 21.5}]) }', {"d": device_id}, token=a.token, tenant=a.id)
    series = "query($id: ID!) { measurements(deviceId: $id) { edges { node { value time } } } }"
    mine = await post(http, a.token, a.id, series, {"id": device_id})
    assert mine.headers[READ_PATH] == "compiled"
    assert orjson.loads(mine.content)["data"]["measurements"]["edges"] == [
        {"node": {"value": 21.5, "time": "2026-01-01T00:00:00+00:00"}}]
    # B naming A's device: the device check fails inside the compiled statement, and the
    # generic path answers NOT_FOUND, as it always did.
    theirs = await post(http, b.token, b.id, series, {"id": device_id})
    assert READ_PATH not in theirs.headers
    assert orjson.loads(theirs.content)["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    # A's token never reads B by naming B: refused by the gate, answered by the generic path.
    refused = await post(http, a.token, b.id, query, {"id": device_id})
    assert READ_PATH not in refused.headers
    assert orjson.loads(refused.content)["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # A group's pages and a gateway's children stay A's too: B naming A's group reads nothing.
    group = (await api.gql('mutation { createGroup(name: "g") { id } }', token=a.token, tenant=a.id)
             ).data["createGroup"]["id"]
    await api.gql('mutation($g: ID!, $p: ID!) { createDevice(input: {name: "kid", groupId: $g, parentId: $p}) '
                  "{ id } }", {"g": group, "p": device_id}, token=a.token, tenant=a.id)
    nested = ("query($g: ID!) { group(id: $g) { devices { totalCount edges { node { name children { name } } } } "
              "subgroups { edges { node { id } } } } groups { edges { node { devices { totalCount } } } } }")
    own = await post(http, a.token, a.id, nested, {"g": group})
    assert own.headers[READ_PATH] == "compiled"
    assert orjson.loads(own.content)["data"]["group"]["devices"]["totalCount"] == 1
    other = await post(http, b.token, b.id, nested, {"g": group})
    assert other.headers[READ_PATH] == "compiled"
    assert orjson.loads(other.content) == {"data": {"group": None, "groups": {"edges": []}}}
    kids = await post(http, b.token, b.id, "query($id: ID!) { device(id: $id) { children { id } } }",
                      {"id": device_id})
    assert orjson.loads(kids.content) == {"data": {"device": None}}


DASHBOARD = ("{ me { user { id email } memberships { role scope tenant { id domain kind } } } "
             "devices(first: 20) { totalCount edges { node { id name availability alarms(first: 5) "
             "{ id severity status } } } pageInfo { hasNextPage endCursor } } }")


GROUP_PAGE = ("query($g: ID!, $after: String) { group(id: $g) { name devices(first: 1, after: $after) { totalCount "
              "edges { cursor node { id name } } pageInfo { hasNextPage endCursor } } all: devices(includeSubgroups: "
              "true) { totalCount edges { node { id } } } subgroups { edges { node { name } } pageInfo { hasNextPage "
              "} } } groups { edges { node { name devices(first: 5) { totalCount edges { node { id } } } } } } }")


async def test_a_groups_device_and_subgroup_pages_are_compiled(api: Api, world: World, http: httpx.AsyncClient,
                                                  app: Starlette) -> None:
    """Group.devices and .subgroups had no translation: a group page's whole operation went the generic
    way. Now each is a correlated keyset page (devices with the subgroups' when asked), in scope."""
    _, t, ids = await _setup(api, world)
    _, west_only = await world.member(t, "MANAGER", group_ids=[ids["west"]])
    answer = await post(http, t.token, t.id, GROUP_PAGE, {"g": ids["east"], "after": None})
    assert answer.headers[READ_PATH] == "compiled"
    east = orjson.loads(answer.content)["data"]["group"]
    assert (east["devices"]["totalCount"], east["all"]["totalCount"]) == (2, 3)
    assert [e["node"]["name"] for e in east["devices"]["edges"]] == ["gw"]
    assert east["devices"]["pageInfo"]["hasNextPage"] is True
    assert east["subgroups"] == {"edges": [{"node": {"name": "east-a"}}], "pageInfo": {"hasNextPage": False}}
    after = east["devices"]["pageInfo"]["endCursor"]
    for token in (t.token, west_only):
        for group, cursor in ((ids["east"], None), (ids["east"], after), (ids["west"], None)):
            assert await both(http, app, token, t.id, GROUP_PAGE, {"g": group, "after": cursor})
    # A group-scoped caller sees its groups' devices only: east is out of its scope.
    scoped = orjson.loads((await post(http, west_only, t.id, GROUP_PAGE, {"g": ids["east"], "after": None})).content)
    assert scoped["data"]["group"] is None
    assert [g["node"]["devices"]["totalCount"] for g in scoped["data"]["groups"]["edges"]] == [1]


async def test_roots_are_compiled_one_by_one_and_merged_in_field_order(api: Api, world: World,
                                                                      http: httpx.AsyncClient, app: Starlette) -> None:
    a, b = await world.tenant(), await world.tenant()
    _, reader = await world.member(a, "READER")
    made = await api.gql('mutation { createDevice(input: {name: "mine"}) { id } }', token=a.token, tenant=a.id)
    await api.gql('mutation($d: ID!) { raiseAlarm(input: {deviceId: $d, type: "t", severity: MAJOR, text: "x"}) '
                  "{ id } }", {"d": made.data["createDevice"]["id"]}, token=a.token, tenant=a.id)
    # The console's first question: `me` (management plane) and a devices page (the tenant's
    # schema) are both compiled, one statement each in one round trip.
    dashboard = await post(http, a.token, a.id, DASHBOARD, {})
    assert dashboard.headers[READ_PATH] == "compiled"
    data = orjson.loads(dashboard.content)["data"]
    assert [m["tenant"]["id"] for m in data["me"]["memberships"]] == [a.id]
    assert data["devices"]["edges"][0]["node"]["alarms"][0]["severity"] == "MAJOR"
    assert await both(http, app, a.token, a.id, DASHBOARD, {})
    # `me` alone needs no tenant (the tenant chooser): compiled without X-Tenant-ID too.
    alone = await http.post("/graphql", json={"query": "{ me { user { email } memberships { role } } }"},
                            headers={"authorization": f"Bearer {a.token}"})
    assert alone.headers[READ_PATH] == "compiled"
    assert orjson.loads(alone.content)["data"]["me"]["memberships"] == [{"role": "ADMIN"}]
    # Roots with no translation are executed; the others still come from SQL, in field order.
    mixed = ("{ roles { name } devices(first: 5) { edges { node { name } } } tenant { id limits { maxDevices } } "
             "me { user { email } } a: tenant { id } }")
    answer = await post(http, a.token, a.id, mixed, {})
    assert answer.headers[READ_PATH] == "partly compiled"
    assert list(orjson.loads(answer.content)["data"]) == ["roles", "devices", "tenant", "me", "a"]
    assert await both(http, app, a.token, a.id, mixed, {})
    # An executed root failing: its error as the generic path gives it, beside the compiled data;
    # a non-null one nulls all of `data` on either path.
    for query in ("{ devices { totalCount } auditLog(first: 1) { totalCount } }",
                  "{ devices { totalCount } apiTokens { name } }"):
        failed = await post(http, reader, a.id, query, {})
        assert orjson.loads(failed.content)["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        await both(http, app, reader, a.id, query, {})
    # Isolation holds per root: B's admin asking the same sees only B, and naming A is refused whole.
    theirs = orjson.loads((await post(http, b.token, b.id, mixed, {})).content)["data"]
    assert theirs["devices"]["edges"] == []
    assert theirs["tenant"]["id"] == b.id
    refused = await post(http, b.token, a.id, mixed, {})
    assert READ_PATH not in refused.headers
    assert orjson.loads(refused.content)["data"] is None


def test_the_compiled_path_is_switched_off_by_the_setting(app: Starlette) -> None:
    endpoint = app.state.graphql
    settings = Settings.from_env({"TENANTRY_COMPILED_READS": "0"})
    assert settings.compiled_reads is False
    assert Settings.from_env({}).compiled_reads is True
    platform = copy.copy(endpoint.platform)
    object.__setattr__(platform, "settings", dataclasses.replace(endpoint.platform.settings, compiled_reads=False))
    assert GraphQLEndpoint(endpoint.schema, platform).planner is None
    assert endpoint.planner is not None


USAGE_FIELDS = leaves("TenantUsageSummary")


async def test_subtenant_usage_answers_alike_on_both_paths(api: Api, world: World, http: httpx.AsyncClient,
                                                           app: Starlette, platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE", customProperties={"plan": "gold", "n": 1.5})
    children = [await world.tenant(ent) for _ in range(3)]
    grandchild = await world.tenant(await world.tenant(ent, kind="ENTERPRISE"))
    await api.gql("mutation($t: ID!) { deleteTenant(id: $t) }", {"t": children[2].id}, token=ent.token, tenant=ent.id)
    async with platform.db.owner.begin() as conn:
        for n, tenant in enumerate([*children, grandchild]):
            await conn.execute(text(
                "INSERT INTO tenantry.usage_daily (tenant_id, day, request_count, measurements_created_count, "
                "alarms_updated_count, device_count, storage_size) SELECT :t, DATE '2026-03-01' + d, 10 * d + :n, "
                "5000000000, d, 3 + d % 4 + :n, 1048576 * d FROM generate_series(0, 40) d "
                "ON CONFLICT DO NOTHING"), {"t": tenant.id, "n": n})
    _, reader = await world.member(ent, "READER")
    rng = random.Random(16)
    answered = 0
    for _ in range(30):
        fields = " ".join(rng.sample(USAGE_FIELDS, rng.randint(1, 8)))
        start, end = rng.choice([("2026-03-01", "2026-03-31"), ("2026-03-10", "2026-04-20"),
                                 ("2026-05-01", "2026-05-02"), ("2026-03-31", "2026-03-01")])
        flags = rng.sample(["includeDescendants: false", "includeDeleted: false"], rng.randint(0, 2))
        query = f'{{ subtenantUsage(from: "{start}", to: "{end}"{", " if flags else ""}{", ".join(flags)}) ' \
                f"{{ {fields} }} }}"
        for token in (ent.token, reader, children[0].token):
            answered += await both(http, app, token, ent.id if token != children[0].token else children[0].id,
                                   query, {})
    assert answered >= 30, answered
    # tenants: the subtree as a connection, with its filter, cursors and count
    tenant_fields = TENANT_FIELDS
    answered = 0
    for _ in range(30):
        node = " ".join(rng.sample(tenant_fields, rng.randint(1, 6)))
        args = rng.sample([f"first: {rng.choice([0, 1, 2, 50, 501])}",
                           f'after: "{rng.choice([encode_cursor(children[0].id), encode_cursor("zz"), "%%"])}"',
                           f"filter: {{status: {rng.choice(['ACTIVE', 'DELETED', 'SUSPENDED'])}}}",
                           f'filter: {{search: "{rng.choice(["co", "CO", "%", "x"])}", kind: STANDARD}}',
                           f'filter: {{parentId: "{ent.id}"}}'], rng.randint(0, 2))
        if sum(a.startswith("filter") for a in args) > 1:
            args = args[:1]
        extra = rng.sample(["totalCount", "pageInfo { hasNextPage endCursor }", "__typename"], rng.randint(0, 2))
        query = f"{{ tenants{'(' + ', '.join(args) + ')' if args else ''} {{ edges {{ cursor node {{ {node} }} }} " \
                f"{' '.join(extra)} }} }}"
        for token in (ent.token, reader):
            answered += await both(http, app, token, ent.id, query, {})
    assert answered >= 15, answered


async def test_values_reach_the_compiled_statement_as_literals(api: Api, world: World,
                                                               http: httpx.AsyncClient) -> None:
    t = await world.tenant()
    await api.gql('mutation { createDevice(input: {name: "it\'s \\\\ 50%_off"}) { id } }', token=t.token, tenant=t.id)
    await api.gql('mutation { createDevice(input: {name: "plain"}) { id } }', token=t.token, tenant=t.id)
    query = "query($c: String!) { devices(filter: {nameContains: $c}) { totalCount edges { node { name } } } }"
    for needle, found in (("'s \\ 50%", ["it's \\ 50%_off"]), ("%_", ["it's \\ 50%_off"]), ("x%", []),
                          ("') OR true --", []), ("' OR '1'='1", []), ("\\'", []), ("", ["it's \\ 50%_off", "plain"])):
        answer = await post(http, t.token, t.id, query, {"c": needle})
        assert answer.headers[READ_PATH] == "compiled"
        devices = orjson.loads(answer.content)["data"]["devices"]
        assert [e["node"]["name"] for e in devices["edges"]] == found, needle
        assert devices["totalCount"] == len(found)


async def test_a_failing_field_cancelling_its_siblings_is_not_internal(api: Api, world: World, app: Starlette,
                                                                      http: httpx.AsyncClient) -> None:
    """Found by the differential test: when a non-null root field fails, graphql-core cancels the
    sibling resolvers, one of them mid-statement; finishing that request's transaction then
    failed (INTERNAL) instead of answering the field's own error."""
    t = await world.tenant()
    query = (f'{{ group(id: "{nowhere(t, "Group")}") {{ id }} devices(after: "azow") {{ totalCount }} '
             f'a: group(id: "{encode("Group", t.id, 1)}") {{ id }} }}')
    with generic_path(app):
        for _ in range(30):
            answer = await post(http, t.token, t.id, query, {})
            body = orjson.loads(answer.content)
            assert [e["extensions"]["code"] for e in body["errors"]] == ["INVALID_INPUT"], body
    # The connections went back to the pool usable: the next requests are answered.
    listed = await post(http, t.token, t.id, "{ devices { totalCount } }", {})
    assert orjson.loads(listed.content) == {"data": {"devices": {"totalCount": 0}}}


async def test_compiled_reads_are_metered_and_parent_level_ones_audited(api: Api, world: World, platform: Platform,
                                                                        http: httpx.AsyncClient) -> None:
    parent = await world.tenant(kind="ENTERPRISE")
    t = await world.tenant(parent)
    await api.gql("mutation { setParentAccess(policy: FULL) { parentAccess } }", token=t.token, tenant=t.id)
    user_id, support = await world.subtree_admin(parent)
    await platform.meter.flush()
    before = platform.meter.pending
    for token in (t.token, support, support):
        answer = await post(http, token, t.id, "{ devices { totalCount } }", {})
        assert answer.headers[READ_PATH] == "compiled"
        assert orjson.loads(answer.content) == {"data": {"devices": {"totalCount": 0}}}
    assert platform.meter.pending - before == 3 + 3  # request_count and query_cost (1 each), as on the generic path
    async with platform.db.owner.connect() as conn:
        audited = (await conn.execute(text("SELECT count(*) FROM tenantry.audit_log WHERE tenant_id = :t AND "
                                           "action = 'parent_access' AND actor_id = :u"),
                                      {"t": t.id, "u": user_id})).scalar_one()
    assert audited == 2  # each parent-level read, kept with the read's own transaction


def test_an_integer_cursor_needs_no_urlsafe_translation() -> None:
    """The compiled path writes encode_cursor(id) as plain base64 (app.graphql.engine.sql_json.CURSOR):
    exact only because "k:<digits>" never yields "+" or "/" and stays below a line's length."""
    import base64

    rng = random.Random(7)
    for key in [0, 9, 10, 2**63 - 1, *range(20_000), *(rng.randrange(2**63) for _ in range(20_000))]:
        assert base64.b64encode(f"k:{key}".encode()).decode() == encode_cursor(key)


async def test_a_get_request_is_compiled_too(api: Api, world: World, http: httpx.AsyncClient) -> None:
    t = await world.tenant()
    await api.gql('mutation { createDevice(input: {name: "g"}) { id } }', token=t.token, tenant=t.id)
    answer = await http.get("/graphql", params={"query": "query Q($n: Int) { devices(first: $n) { edges { node "
                                                         "{ name } } } }", "variables": '{"n": 5}'},
                            headers={"authorization": f"Bearer {t.token}", "x-tenant-id": t.id,
                                     "accept": "application/graphql-response+json"})
    assert answer.status_code == 200
    assert answer.headers[READ_PATH] == "compiled"
    assert answer.headers["content-type"].startswith("application/graphql-response+json")
    assert orjson.loads(answer.content) == {"data": {"devices": {"edges": [{"node": {"name": "g"}}]}}}


async def test_a_cancelled_resolver_does_not_cancel_its_siblings_shared_load(api: Api, world: World, app: Starlette,
                                                                           http: httpx.AsyncClient) -> None:
    """Found by the corpus: two resolvers awaiting one DataLoader future (the same device's
    groups), one of them cancelled by graphql-core because a sibling non-null field failed
    (`parent.alarms(first: 101)`), made the other raise CancelledError out of the whole request:
    a 500 without a GraphQL body."""
    t = await world.tenant()
    group = (await api.gql('mutation { createGroup(name: "g") { id } }', token=t.token, tenant=t.id)
             ).data["createGroup"]["id"]
    parent = (await api.gql('mutation($g: ID!) { createDevice(input: {name: "p", groupId: $g}) { id } }',
                            {"g": group}, token=t.token, tenant=t.id)).data["createDevice"]["id"]
    child = (await api.gql('mutation($p: ID!) { createDevice(input: {name: "c", parentId: $p}) { id } }',
                           {"p": parent}, token=t.token, tenant=t.id)).data["createDevice"]["id"]
    query = """query($d: ID!) { device(id: $d) { parent { alarms(first: 101) { id } groups { id } } }
        devices { edges { node { name groups { name } } } } }"""
    with generic_path(app):
        for _ in range(10):
            answer = await post(http, t.token, t.id, query, {"d": child})
            body = orjson.loads(answer.content)
            assert body["data"]["device"] == {"parent": None}, body
            assert [e["extensions"]["code"] for e in body["errors"]] == ["INVALID_INPUT"]
            assert body["data"]["devices"]["edges"] == [{"node": {"name": "p", "groups": [{"name": "g"}]}},
                                                        {"node": {"name": "c", "groups": []}}]


def test_every_leaf_field_of_a_compiled_type_has_a_translation() -> None:
    """A leaf added to a compiled type is compiled too (or the operations selecting it fall off the
    fast path without anyone noticing); the corpus above selects every one of them."""
    missing = {name: sorted(set(leaves(name)) - {"__typename"} - set(fields))
               for name, fields in sql_json.FIELDS.items()}
    assert {name: m for name, m in missing.items() if m} == {}


async def test_me_of_a_disabled_user_is_refused_as_on_the_generic_path(world: World, http: httpx.AsyncClient,
                                                                       app: Starlette, platform: Platform) -> None:
    """A token outlives its user's disabling: `me` must not answer from SQL for it. Disabled as
    `set_disabled` does it (the row, then the registry's cache), the compiled path refuses it
    exactly as the generic path does."""
    t = await world.tenant()
    user_id, token = await world.member(t, "READER")
    query = "{ me { user { email } memberships { role } } }"
    before = await post(http, token, t.id, query, {})
    assert before.headers[READ_PATH] == "compiled"
    async with platform.db.owner.begin() as conn:
        await conn.execute(text("UPDATE tenantry.users SET disabled_at = now() WHERE id = :u"), {"u": user_id})
    platform.registry.forget_user(uuid.UUID(str(user_id)))
    compiled = await post(http, token, t.id, query, {})
    with generic_path(app):
        generic = await post(http, token, t.id, query, {})
    assert compiled.headers.get(READ_PATH) != "compiled"
    refused = orjson.loads(compiled.content)
    assert refused.get("data") in (None, {"me": None})
    assert refused["errors"][0]["extensions"]["code"] in {"UNAUTHENTICATED", "FORBIDDEN"}
    assert refused == orjson.loads(generic.content)
    # Disabled behind the cache's back: the statement's guard fails after its COMMIT went with it,
    # and the generic path answers in a transaction of its own, as it would have alone.
    other_id, other = await world.member(t, "READER")
    assert (await post(http, other, t.id, query, {})).headers[READ_PATH] == "compiled"  # now cached
    async with platform.db.owner.begin() as conn:
        await conn.execute(text("UPDATE tenantry.users SET disabled_at = now() WHERE id = :u"), {"u": other_id})
    compiled = await post(http, other, t.id, query, {})
    with generic_path(app):
        generic = await post(http, other, t.id, query, {})
    assert compiled.headers.get(READ_PATH) != "compiled"
    assert orjson.loads(compiled.content) == orjson.loads(generic.content)
    assert orjson.loads(compiled.content)["errors"][0]["extensions"]["code"] in {"UNAUTHENTICATED", "FORBIDDEN"}


async def test_a_root_pages_rows_read_as_its_json_aggregate_would(platform: Platform) -> None:
    """A root connection's page comes as rows (each value a column), no longer one JSON aggregate:
    each value must read as its JSON would, whatever its type, or the request goes the generic way
    (Fallback) rather than answer differently. On the real database, each type as PostgreSQL sends it."""
    select = ("SELECT 7::bigint, 'it''s \\ \"q\" é'::text, 'x'::varchar, true, 1.50::numeric, 2::numeric, "
              "0.1::float8, '{\"a\": [1, null]}'::jsonb, json_build_array(1, 'b'), ARRAY['a', 'b'], NULL::text, "
              "replace(to_char(timestamptz '2026-01-02 03:04:05.5+00' AT TIME ZONE 'UTC', "
              "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), '.000000+', '+')")
    refused = ["SELECT now()", "SELECT current_date", "SELECT gen_random_uuid()", "SELECT interval '1 day'"]
    async with platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        (result,) = await simple_query(driver, select)
        assert page_rows(result) == [[7, "it's \\ \"q\" é", "x", True, 1.5, 2, 0.1, {"a": [1, None]}, [1, "b"],
                                      ["a", "b"], None, "2026-01-02T03:04:05.500000+00:00"]]
        (result,) = await simple_query(driver, select.replace("SELECT", "SELECT * FROM (SELECT") + ") s WHERE false")
        assert page_rows(result) == []
        for sql in refused:
            (result,) = await simple_query(driver, sql)
            with pytest.raises(sql_json.Fallback):
                page_rows(result)
