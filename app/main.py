"""The ASGI application: `create_app()` for uvicorn and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import multiprocess
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.db.embedded import Supervisor
from app.db.transaction import is_citus
from app.graphql.schema import build_schema
from app.http.console import LOCAL_ORIGINS, console_routes
from app.http.export import UsageExportEndpoint
from app.http.graphql import GRAPHIQL_DIR, GraphQLEndpoint, GraphQLLane
from app.http.middleware import RequestIdMiddleware
from app.http.mqtt import BrokerHooks
from app.http.oidc import OidcEndpoints
from app.http.operator import OperatorEndpoints
from app.http.tracing import configure_tracing
from app.logs import configure_logging
from app.realtime.hub import Hub
from app.realtime.mqtt import Bridge
from app.realtime.shares import Follower
from app.realtime.webhooks import Dispatcher
from app.runtime import outbox
from app.runtime.metrics import MULTIPROCESS_DIR
from app.runtime.platform import Platform
from app.services import housekeeping
from app.services.changes.webhooks import Outbound, webhook_box
from app.services.connectivity import monitor
from app.services.data import retention
from app.services.tenants.provisioning import keep_spares
from app.services.usage import statistics as usage
from app.settings import Settings
from app.stopping import on_stop_signal
from app.tenancy.ddl import tenant_ddl

SHUTDOWN_WAIT = 4.0  # seconds for background tasks, then for the last usage flush


def create_app(settings: Settings | None = None, platform: Platform | None = None,
               stop_requested: Callable[[], bool] | None = None, tracer: Any | None = None) -> Starlette:
    """Build the app. A given `platform` is shared and left open (tests); otherwise one is made."""
    if settings is None and platform is None:  # a uvicorn worker process: configure like the CLI does
        settings = Settings.from_env()
        configure_logging(settings.log_format, settings.log_level)
    settings = settings or (platform.settings if platform else Settings.from_env())
    owned = platform is None
    live = platform or Platform.create(settings)
    endpoint = GraphQLEndpoint(build_schema(settings), live, tracer if tracer is not None else configure_tracing())
    oidc = OidcEndpoints(live)
    operator = OperatorEndpoints(live)
    hooks = BrokerHooks(live)
    middleware = [Middleware(RequestIdMiddleware)]
    if settings.cors_origins or not settings.production:
        middleware.append(Middleware(
            CORSMiddleware,
            # Configured origins; else, in development only, a local dev server's (Vite on localhost:5173).
            allow_origins=list(settings.cors_origins),
            allow_origin_regex=None if settings.cors_origins else LOCAL_ORIGINS,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type", "x-tenant-id", "x-request-id"],
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        ))
    middleware.append(Middleware(GraphQLLane, endpoint=endpoint))  # /graphql itself, past the router
    graphiql = Mount("/graphiql", StaticFiles(directory=GRAPHIQL_DIR, html=True), name="graphiql")
    static = [graphiql] if settings.graphiql else []
    app = Starlette(
        routes=[*static, *console_routes(settings),
            Route("/graphql", endpoint.handle, methods=["GET", "POST"]),
            Route("/healthz", operator.healthz, methods=["GET"]),
            Route("/readyz", operator.readyz, methods=["GET"]),
            Route("/metrics", operator.metrics, methods=["GET"]),
            Route("/export/usage.csv", UsageExportEndpoint(live).handle, methods=["GET"]),
            Route("/auth/oidc/callback", oidc.callback, methods=["GET"]),
            Route("/auth/oidc/{tenant_id}/login", oidc.login, methods=["GET"]),
            Route("/mqtt/auth", hooks.authenticate, methods=["POST"]),
            Route("/mqtt/acl", hooks.authorize, methods=["POST"]),
            Route("/mqtt/auth/user", hooks.user, methods=["POST"]),
            Route("/mqtt/auth/vhost", hooks.vhost, methods=["POST"]),
            Route("/mqtt/auth/resource", hooks.resource, methods=["POST"]),
            Route("/mqtt/auth/topic", hooks.topic, methods=["POST"]),
        ],
        middleware=middleware,
        lifespan=_lifespan(live, settings, owned=owned, stop_requested=stop_requested),
    )
    app.state.platform = live
    app.state.realtime = endpoint.operations.hub
    app.state.graphql = endpoint  # tests compare its two read paths
    return app


def _lifespan(live: Platform, settings: Settings, *, owned: bool, stop_requested: Callable[[], bool] | None
              ) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """Start-up and shutdown: the background loops run while the app serves."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tenant_ddl()  # render the provisioning DDL now, not in the first createSubtenant
        for engine in (live.db.owner, live.db.app):  # asked now, never by a request holding a connection
            await is_citus(engine)
        background = _start_background(live, settings)
        background += _start_log_readers(live, settings, app.state.realtime)
        on_stop_signal(app.state.graphql.operations.stop_streams)  # SSE streams end when a stop comes
        if stop_requested is not None and stop_requested():
            # A stop arrived before uvicorn listened for signals (app.stopping): hand it over now.
            signal.raise_signal(signal.SIGTERM)
        tune_collector(settings)
        yield
        await _stop_background([*background, *live.background])
        try:
            await asyncio.wait_for(live.meter.flush(), timeout=SHUTDOWN_WAIT)  # nothing counted is lost
        except (TimeoutError, Exception):
            logging.getLogger("tenantry").exception("could not flush the usage counters at shutdown")
        if os.environ.get(MULTIPROCESS_DIR):  # this worker's live gauges leave the sums
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
        if owned:
            await live.close()

    return lifespan


def tune_collector(settings: Settings) -> None:
    """Set the garbage collector up for serving, once start-up is done (benchmarks call it too).

    What start-up built (modules, schema, compiled plans) lives as long as the process: frozen out
    of the collector's way, so full collections traverse only what requests and subscriptions made
    (bench/realtime.py saw 170-320 ms pauses before). The young threshold: `gc_young_threshold`."""
    gc.collect()
    gc.freeze()
    if settings.gc_young_threshold > 0:
        gc.set_threshold(settings.gc_young_threshold, 20, 100)


def _start_log_readers(live: Platform, settings: Settings, hub: Hub) -> list[asyncio.Task[None]]:
    """Webhook delivery, standing shares and the MQTT bridge's downlinks, from the change log; the
    hub listens always, and wakes them when a log grows."""
    def counted(tenant_id: str, n: int) -> None:
        if settings.metering:
            live.meter.add(tenant_id, {"webhook_delivery_count": n})

    dispatcher = Dispatcher(engine=live.db.app, box=webhook_box(settings.resolved_secret_key()),
                            outbound=Outbound.of(settings.webhook_allowed_networks),
                            timeout=settings.webhook_timeout_seconds, retry_hours=settings.webhook_retry_hours,
                            counted=counted)
    hub.on_change.append(dispatcher.wake)
    follower = Follower(live.db.app)  # standing shares follow their sources' logs too
    hub.on_change.append(follower.wake)
    readers = [asyncio.create_task(dispatcher.run(), name="webhooks"),
               asyncio.create_task(follower.run(), name="shares")]
    if settings.mqtt_amqp_url:  # devices over MQTT: uplinks in, operations out, revoked devices cut off
        bridge = Bridge(live)
        hub.on_change.append(bridge.wake)
        hub.on_access.append(bridge.access_changed)
        readers.append(asyncio.create_task(bridge.run(), name="mqtt"))
    hub.start()
    return readers


def _start_background(live: Platform, settings: Settings) -> list[asyncio.Task[None]]:
    background = [asyncio.create_task(live.meter.run(settings.usage_flush_seconds)),
                  # At once and every 30 s: copy jobs of a process that died become FAILED
                  # (their target untouched), expired idempotency keys go.
                  asyncio.create_task(housekeeping.periodic(live.db.app, 30.0, live.clock)),
                  asyncio.create_task(outbox.periodic(live.db.app, 5.0, smtp_url=settings.smtp_url,
                                                      sender=settings.mail_from))]
    if settings.database_url is None:  # the embedded PostgreSQL: started again whenever it goes
        live.embedded = Supervisor(settings.data_dir)
        background.append(asyncio.create_task(live.embedded.run()))
    if settings.spare_schemas > 0:
        background.append(asyncio.create_task(keep_spares(
            live.db.owner, count=settings.spare_schemas, app_role=settings.app_role,
            tenant_roles_login=settings.tenant_roles_login)))
    if settings.retention_interval_seconds > 0:
        background.append(asyncio.create_task(retention.periodic(live.db.app, settings.retention_interval_seconds)))
    if settings.availability_interval_seconds > 0:
        background.append(asyncio.create_task(monitor.periodic(live.db.app, settings.availability_interval_seconds)))
    if settings.usage_snapshot_seconds > 0:
        background.append(asyncio.create_task(usage.periodic_snapshots(
            live.db.app, settings.usage_snapshot_seconds, warning_ratio=settings.limit_warning_ratio)))
    return background


async def _stop_background(tasks: list[asyncio.Task[None]]) -> None:
    """Bounded: a stop completes within seconds whatever a background task is doing (a copy job
    marks itself FAILED on cancellation; one that does not finish in time is left to the next
    start's housekeeping, which finds its lease free)."""
    for task in tasks:
        task.cancel()
    done, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT) if tasks else (set(), set())
    for task in done:  # collected: a step cut short by the stop is expected, not "never retrieved"
        if not task.cancelled():
            task.exception()
    if stuck:
        logging.getLogger("tenantry").warning("%d background task(s) did not stop in %.0f s", len(stuck),
                                              SHUTDOWN_WAIT)
