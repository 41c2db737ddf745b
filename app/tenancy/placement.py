"""Where tenant schemas live, how big they are, and moving them between Citus nodes.

On a single PostgreSQL server every schema is local: a placement has no node, and sizes come
from `pg_total_relation_size`. On Citus (schema-based sharding) each tenant schema is one
colocation group on one node: the node comes from Citus's metadata (`pg_dist_placement`), and
sizes are asked of the nodes themselves, because the coordinator only holds empty shell tables
(its own sizes showed every tenant at ~528 kB). One round trip per node answers a whole batch.

Moves use Citus's own online move (`citus_schema_move`, logical replication: reads go on, writes
wait only for the final catch-up); a rebalance is Citus's own plan, run here one schema at a time
so that an operator sees progress and can stop it between moves (a rerun plans again).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.naming import tenant_schema
from app.db.transaction import Executor, count_schemas, is_citus, transaction
from app.errors import Conflict, InvalidInput, NotFound, Unavailable

__all__ = ["MoveProgress", "Moved", "Placement", "move", "nodes", "parse_node", "placements", "rebalance_plan",
           "require_citus", "schema_placements"]

_NODE = re.compile(r"^(?P<host>[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>[0-9]{1,5})$")
STRATEGIES = {"size": "by_disk_size", "count": "by_shard_count"}


@dataclass(frozen=True)
class Placement:
    node: str | None  # "host:port" of the Citus node holding the schema; None on a single server
    size_bytes: int  # tables, indexes and TOAST, as stored on that node


@dataclass(frozen=True)
class MoveProgress:
    phase: str  # Citus's status of the move ("Setting Up", "Copying Data", "Catching Up", ...)
    copied_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Moved:
    tenant_id: str
    source: str
    target: str
    size_bytes: int
    seconds: float
    # The longest a row lock on the tenant's schema had to wait during the move: what a write
    # request would have stalled (reads are not blocked by a move).
    longest_write_stall_ms: float


def parse_node(value: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets) of a node, or INVALID_INPUT."""
    found = _NODE.match(value.strip())
    if not found or not 0 < int(found["port"]) < 65536:
        raise InvalidInput(f"a node is host:port, e.g. 10.0.0.2:5432 (got {value!r})", field="node")
    return found["host"].strip("[]"), int(found["port"])


def _node(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def nodes(db: Executor) -> list[str]:
    """The Citus nodes that may hold tenant schemas (active primaries with shards), as host:port."""
    rows = (await db.execute(text(
        "SELECT nodename, nodeport FROM pg_dist_node WHERE isactive AND noderole = 'primary' AND shouldhaveshards "
        "ORDER BY nodeid"))).all()
    return [_node(r.nodename, r.nodeport) for r in rows]


# Each tenant table's shard and its node, from the coordinator's metadata.
_SHARDS = text(
    "SELECT n.nspname AS schema, c.relname || '_' || ds.shardid AS shard, nd.nodeid, nd.nodename, nd.nodeport "
    "FROM pg_dist_shard ds JOIN pg_class c ON c.oid = ds.logicalrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_dist_placement pl ON pl.shardid = ds.shardid "
    "JOIN pg_dist_node nd ON nd.groupid = pl.groupid AND nd.noderole = 'primary' "
    "WHERE n.nspname = ANY(CAST(:schemas AS text[]))")
# Sizes on one node, found through the catalogs (no schema privilege is needed to read them).
_NODE_SIZES = (
    "SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname, pg_total_relation_size(c.oid)), '{{}}') "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = ANY('{schemas}'::text[]) AND c.relname = ANY('{shards}'::text[]) AND c.relkind = 'r'")
_LOCAL = text(
    "SELECT n.nspname AS schema, coalesce(sum(pg_total_relation_size(c.oid)), 0) AS size FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(CAST(:schemas AS text[])) "
    "AND c.relkind = 'r' GROUP BY n.nspname")


async def placements(db: Executor, tenant_ids: Sequence[str], *, citus: bool) -> dict[str, Placement]:
    """Node and size of each named tenant's schema that exists (one round trip per node on Citus)."""
    schemas = {tenant_schema(t): t for t in tenant_ids}
    return {schemas[s]: p for s, p in (await schema_placements(db, list(schemas), citus=citus)).items()}


async def schema_placements(db: Executor, schemas: Sequence[str], *, citus: bool) -> dict[str, Placement]:
    """`placements` by schema name (spare schemas and the management tenant's too)."""
    if not citus:
        # Sizing a table opens it, and its catalog entries stay in the backend as if it had worked
        # there: the schemas count against the connection's limit (a usage sweep of 1,000 tenants
        # grew one backend by 164 MB before, 3 MB after).
        await count_schemas(db, [s.removeprefix("t_") for s in schemas])
        rows = (await db.execute(_LOCAL, {"schemas": list(schemas)})).all()
        return {r.schema: Placement(None, int(r.size)) for r in rows}
    shards = (await db.execute(_SHARDS, {"schemas": list(schemas)})).all()
    if not shards:
        return {}
    # Schema and shard names are ours (t_<id>, table_<shardid>): nothing in them needs quoting.
    command = _NODE_SIZES.format(schemas="{" + ",".join(sorted({r.schema for r in shards})) + "}",
                                 shards="{" + ",".join(r.shard for r in shards) + "}")
    sizes: dict[int, dict[str, int]] = {}
    failed: dict[int, str] = {}
    for r in (await db.execute(text("SELECT nodeid, success, result FROM run_command_on_all_nodes(:command)"),
                               {"command": command})).all():
        if r.success:
            sizes[r.nodeid] = orjson.loads(r.result)
        else:
            failed[r.nodeid] = r.result
    # A size of 0 for a node that did not answer would pass for an empty tenant (and lift its
    # storage limit): refuse instead, naming the node.
    for r in shards:
        if r.nodeid in failed:
            raise Unavailable(f"Citus node {_node(r.nodename, r.nodeport)} did not answer: {failed[r.nodeid]}")
    total: dict[str, int] = defaultdict(int)
    where: dict[str, str] = {}
    for r in shards:
        # A moved schema's old shards may linger on the source until Citus cleans them up: only
        # the node the metadata names counts.
        total[r.schema] += int(sizes.get(r.nodeid, {}).get(f"{r.schema}.{r.shard}", 0))
        where[r.schema] = _node(r.nodename, r.nodeport)
    return {s: Placement(where[s], total[s]) for s in where}


async def require_citus(engine: AsyncEngine) -> None:
    if not await is_citus(engine):
        raise Conflict("tenants move between Citus nodes; this database is a single PostgreSQL server")


async def rebalance_plan(db: Executor, by: str) -> list[tuple[str, str]]:
    """Citus's plan to even out the nodes (`by` size or count), as (tenant schema, target node),
    one per schema to move. Spare schemas of the provisioning pool are moved like tenants."""
    if by not in STRATEGIES:
        raise InvalidInput(f"rebalance by one of: {', '.join(STRATEGIES)}", field="by")
    rows = (await db.execute(text(
        "SELECT DISTINCT ON (n.nspname) n.nspname, p.targetname, p.targetport "
        "FROM get_rebalance_table_shards_plan(rebalance_strategy := :strategy) p "
        "JOIN pg_class c ON c.oid = p.table_name JOIN pg_namespace n ON n.oid = c.relnamespace "
        "ORDER BY n.nspname"), {"strategy": STRATEGIES[by]})).all()
    return [(r.nspname, _node(r.targetname, r.targetport)) for r in rows]


async def move(owner: AsyncEngine, schema: str, node: str, *,
               on_progress: Callable[[MoveProgress], None] | None = None) -> Moved:
    """Move one tenant schema (all its tables, colocated) to `node` online, watching progress and
    the write stall it causes. NOT_FOUND for a schema Citus does not distribute, CONFLICT when it
    is already there, INVALID_INPUT for a node that cannot hold schemas."""
    await require_citus(owner)
    host, port = parse_node(node)
    target = _node(host, port)
    async with transaction(owner) as tx:
        if target not in await nodes(tx):
            raise InvalidInput(f"{target} is not an active Citus node that holds shards", field="node")
        found = (await schema_placements(tx, [schema], citus=True)).get(schema)
    if found is None or found.node is None:
        raise NotFound(f"no distributed schema {schema}")
    if found.node == target:
        raise Conflict(f"{schema} is already on {target}")
    done = asyncio.Event()
    watcher = asyncio.ensure_future(_watch(owner, schema, done, on_progress))
    started = time.perf_counter()
    try:
        async with owner.connect() as conn:
            await conn.execute(text("SELECT citus_schema_move(CAST(:schema AS regnamespace), :host, :port)"),
                               {"schema": schema, "host": host, "port": port})
            await conn.commit()
    except DBAPIError as exc:  # Citus cleans a failed move up: the schema stays whole where it was
        raise Conflict(f"moving {schema} to {target} failed; it stays on {found.node}: {exc.orig}") from exc
    finally:
        done.set()
        stall = await watcher
    return Moved(schema, found.node, target, found.size_bytes, time.perf_counter() - started, stall)


async def _watch(owner: AsyncEngine, schema: str, done: asyncio.Event,
                 on_progress: Callable[[MoveProgress], None] | None) -> float:
    """Until `done`: report Citus's progress of the move, and take a row lock on the schema's
    alembic_version every 50 ms in a transaction of its own; returns the longest wait (ms)."""
    longest = 0.0
    last_report = 0.0
    async with owner.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        while not done.is_set():
            started = time.perf_counter()
            await conn.exec_driver_sql(f"SELECT 1 FROM {schema}.alembic_version FOR UPDATE")
            longest = max(longest, (time.perf_counter() - started) * 1000)
            if on_progress is not None and started - last_report >= 0.25:
                last_report = started
                row = (await conn.execute(text(
                    "SELECT string_agg(DISTINCT status, ', '), coalesce(sum(target_shard_size), 0), "
                    "coalesce(sum(source_shard_size), 0) FROM get_rebalance_progress() "
                    "WHERE CAST(table_name AS text) LIKE :prefix"), {"prefix": schema + ".%"})).one()
                if row[0]:
                    on_progress(MoveProgress(str(row[0]), int(row[1]), int(row[2])))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.05)
    return longest
