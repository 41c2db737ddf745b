"""GraphQL over WebSockets (graphql-transport-ws) and Server-Sent Events, on /graphql.

Both transports authenticate through the access gate (WebSocket: `connection_init`'s
`Authorization` and `X-Tenant-ID` keys; SSE: the request headers), keep a realtime session
(app.realtime.hub) that the hub checks again when access changes, and run operations the same
way (`Operations`):
- subscriptions: graphql-core builds the source stream from our resolvers
  (app.graphql.types.realtime), and each event is executed for the operation's selection. An
  event's JSON is rendered once per (event, document, variables, rights) and reused for every
  subscriber sharing them: a thousand dashboards on one tenant cost one execution per alarm.
- queries and mutations: executed like a request (one result, then complete).

graphql-transport-ws (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md): close codes
4400 bad message, 4401 subscribe before ack, 4403 refused or access ended, 4406 wrong subprotocol,
4408 no connection_init in time, 4409 duplicate operation id, 4429 a second connection_init.
Server pings every `keepalive_seconds`; client pings are answered.

SSE, distinct-connections mode (https://github.com/enisdenjo/graphql-sse/blob/master/PROTOCOL.md):
`POST /graphql` with `Accept: text/event-stream`; events `next` (data: an execution result) and
`complete`; a comment line every `keepalive_seconds`; the stream ends when access ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from graphql import ExecutionResult, GraphQLError, create_source_event_stream, execute_subscription_event
from graphql import OperationType as AstOperationType
from graphql.language import DocumentNode, OperationDefinitionNode
from graphql.validation import specified_rules
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.types.graphql import OperationType

from app.errors import AppError, QueryTooComplex, Unavailable
from app.graphql.context import Context
from app.graphql.engine import fast_path
from app.graphql.engine.cost import CostModel
from app.graphql.engine.execution import TenantryExecutor
from app.graphql.schema import TenantrySchema
from app.http.errors import RequestError, entry, error_response, format_graphql_error, invalid
from app.http.payload import unpack
from app.http.persisted import PersistedQueries
from app.http.routing import credentials
from app.realtime.hub import Hub
from app.realtime.sessions import Session
from app.runtime.platform import Platform

log = logging.getLogger("tenantry.realtime")
PROTOCOL = "graphql-transport-ws"
Emit = Callable[[dict[str, Any]], Awaitable[None]]


class Refused(Exception):
    """The operation cannot start: these errors answer it."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"] if errors else "refused")
        self.errors = errors


class Operations:
    """Runs operations of realtime sessions (WebSocket connections, SSE streams)."""

    def __init__(self, platform: Platform, schema: TenantrySchema, persisted: PersistedQueries) -> None:
        self.platform = platform
        self.schema = schema
        self.persisted = persisted
        self.rules = tuple(specified_rules) + tuple(self.schema.extra_validation_rules)
        st = self.platform.settings  # what an operation may cost, checked before it runs (every transport)
        self.costs = CostModel(schema._schema, limit=st.max_query_cost, page_cap=st.page_size_cap,
                               list_estimate=st.unpaged_list_estimate, max_tokens=st.max_query_tokens)
        # The realtime hub is this transport's: built with it, stopped when the platform closes.
        s = self.platform.settings
        self.hub = Hub(engine=self.platform.db.app, gate=self.platform.gate,
                       per_connection=s.subscriptions_per_connection, per_tenant=s.subscriptions_per_tenant,
                       per_user=s.subscriptions_per_user,
                       queue_size=s.subscription_queue, recheck_seconds=s.subscription_recheck_seconds,
                       counted=self._count_deliveries)
        self.platform.on_close(self.hub.stop)
        self._renders = TenantTurns()
        # Open SSE streams (each one's end), ended at a stop signal: see stop_streams.
        self.streams: set[Callable[[str], None]] = set()
        self.stopping = False

    def stop_streams(self) -> None:
        """The server is stopping: every SSE stream gets its `complete` event and closes, and new ones
        are refused, so the server's wait for open responses ends (WebSockets get 1012 from uvicorn)."""
        self.stopping = True
        for end in list(self.streams):
            end("the server is shutting down")

    def _count_deliveries(self, tenant_id: str, n: int) -> None:
        if self.platform.settings.metering:
            self.platform.meter.add(tenant_id, {"subscription_event_count": n})

    async def open_session(self, *, authorization: str | None, tenant_header: str | None,
                           on_end: Callable[[str], None], client: str | None = None) -> Session:
        """The gate's answer for these credentials (AppError when refused), as a live session."""
        hub = self.hub
        hub.start()
        routed, expires_at = await self.platform.gate.recheck(authorization=authorization, tenant_header=tenant_header)
        return hub.session(authorization=authorization, tenant_header=tenant_header, routed=routed,
                           expires_at=expires_at, on_end=on_end, client=client)

    def _context(self, session: Session, key: str = "") -> Context:
        context = Context.of(self.platform, request_id=secrets.token_hex(16), authorization=session.authorization,
                             tenant_header=session.tenant_header, client=session.client)
        context.session, context.operation_key = session, key
        context.access.ids.tenant = session.tenant_id  # the session is routed: its events' ids speak of it
        return context

    def _document(self, payload: Any, authorization: str | None
                  ) -> tuple[str, DocumentNode, OperationDefinitionNode, dict[str, Any] | None, str | None]:
        if not isinstance(payload, dict):
            raise Refused([invalid("the payload must be an object")])
        try:
            query, variables, operation_name = unpack(payload, self.persisted, authorization,
                                                      max_bytes=self.platform.settings.max_document_bytes)
        except RequestError as exc:
            raise Refused([entry(exc)]) from None
        try:
            document = fast_path._parse(query, self.platform.settings.max_query_tokens)
        except GraphQLError as exc:
            raise Refused([format_graphql_error(exc, "-", None)]) from None
        errors = fast_path._validate(self.schema._schema, document, self.rules)
        if errors:
            raise Refused([format_graphql_error(e, "-", None) for e in errors])
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)
                      and (operation_name is None or (d.name is not None and d.name.value == operation_name))]
        if len(operations) != 1:
            raise Refused([invalid("name the operation to run (operationName)" if operations else
                                   f"no operation named {operation_name!r}")])
        return query, document, operations[0], variables, operation_name

    async def run(self, session: Session, key: str, payload: Any, emit: Emit) -> None:
        """Run one operation to its end, emitting each result; Refused before anything ran."""
        query, document, operation, variables, operation_name = self._document(payload, session.authorization)
        try:
            self.costs.check(query, operation_name, variables)
        except QueryTooComplex as exc:
            raise Refused([entry(exc)]) from None
        if operation.operation != AstOperationType.SUBSCRIPTION:
            await self._single(session, query, variables, operation_name, emit)
            return
        context = self._context(session, key)
        built = TenantryExecutor.build(self.schema._schema, document, context_value=context,
                                       raw_variable_values=variables, operation_name=operation_name)
        if isinstance(built, list):
            raise Refused([format_graphql_error(e, context.request_id, context) for e in built])
        try:
            try:
                stream = create_source_event_stream(built)
                if not isinstance(stream, ExecutionResult) and asyncio.iscoroutine(stream):
                    stream = await stream
            finally:
                await context.finish(commit=False)
        except BaseException:  # a `complete` right after `subscribe` cancels us here: the slot goes too
            session.close(key)
            raise
        if isinstance(stream, ExecutionResult):
            session.close(key)
            raise Refused([format_graphql_error(e, context.request_id, context) for e in stream.errors or []])
        variables_key = orjson.dumps(variables or {}, option=orjson.OPT_SORT_KEYS)
        try:
            async for event in stream:  # type: ignore[union-attr]
                body = await self._render(built, event, (id(document), operation_name, variables_key,
                                                         session.rights), session)
                await emit({"__raw__": body})
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[union-attr]
            session.close(key)

    async def _render(self, executor: Any, event: object, key: object, session: Session) -> bytes:
        """The event's result for this selection, rendered once for every subscriber sharing `key`,
        one render at a time per tenant (a tenant with thousands of distinct subscriptions delayed
        every other tenant's events and requests by seconds: now they take turns)."""
        cached = _rendered(event, key)
        if cached is not None:
            return cached
        async with self._renders.slot(session.tenant_id):
            cached = _rendered(event, key)  # rendered while this one waited its turn
            if cached is not None:
                return cached
            rendered = await self._execute_event(executor, event, session)
            if hasattr(event, "__dict__"):  # every subscription event is a strawberry object or a list
                # Kept on the event itself (every subscriber holds the same object): it goes when they
                # are done, so nothing accumulates for the collector to traverse.
                event.__dict__.setdefault("_rendered", {})[key] = rendered
            # Hold the tenant's turn over one pass of the loop: what else is ready (other tenants'
            # events, requests) runs before this tenant's next render.
            await asyncio.sleep(0)
        return rendered

    async def _execute_event(self, executor: Any, event: object, session: Session) -> bytes:
        context = self._context(session)
        per_event = executor.build_per_event_executor(event)
        per_event.context_value = context  # nested fields read in a transaction of their own
        try:
            outcome = execute_subscription_event(per_event)
            result = await outcome if isinstance(outcome, Awaitable) else outcome
        finally:
            await context.finish(commit=False)
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [format_graphql_error(e, context.request_id, context) for e in result.errors]
        return orjson.dumps(body)

    async def _single(self, session: Session, query: str, variables: dict[str, Any] | None,
                      operation_name: str | None, emit: Emit) -> None:
        """A query or mutation over a realtime connection: one result, like a request's, in one of
        the process's in-flight slots (a socket is no way around the cap)."""
        context = self._context(session)
        try:
            async with self.platform.gate.in_flight.slot(context.access.admit(context.client)):
                result = await self.schema.execute(
                    query, variable_values=variables, context_value=context, operation_name=operation_name,
                    allowed_operation_types={OperationType.QUERY, OperationType.MUTATION})
                errors = result.errors or []
                await context.finish(commit=not errors)
        except Unavailable as exc:  # no slot: refused before anything ran
            await context.finish(commit=False)
            await emit({"errors": [entry(exc)]})
            return
        except BaseException:  # the client went away (the stream is cancelled): its connection goes back
            await context.finish(commit=False)
            raise
        body: dict[str, Any] = {"data": None if errors and context.wrote_tenant_data else result.data}
        if errors:
            body["errors"] = [format_graphql_error(e, context.request_id, context) for e in errors]
        await emit(body)


def _rendered(event: object, key: object) -> bytes | None:
    found: dict[object, bytes] | None = getattr(event, "__dict__", {}).get("_rendered")
    return found.get(key) if found is not None else None


class TenantTurns:
    """One turn at a time per tenant (locks made on demand, dropped when nobody waits)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, tenant_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(tenant_id, (asyncio.Lock(), 0))
        self._locks[tenant_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[tenant_id]
            if users <= 1:
                del self._locks[tenant_id]
            else:
                self._locks[tenant_id] = (lock, users - 1)


class WebSocketConnection:
    """One graphql-transport-ws connection."""

    def __init__(self, operations: Operations, websocket: WebSocket, send: Send) -> None:
        self.operations = operations
        self.ws = websocket
        self._asgi_send = send  # messages go straight to the server (Starlette's wrapper re-checks its state)
        self.settings = operations.platform.settings
        self.max_message = self.settings.max_body_bytes  # a message is a request: the same limit
        self.session: Session | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()
        self._closing: tuple[int, str] | None = None
        self._closed = asyncio.Event()

    async def _receive(self) -> str:
        """The next text frame; a binary one reads as "", an invalid message (the protocol's are JSON text)."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message["text"] if isinstance(message.get("text"), str) else ""

    async def serve(self) -> None:
        offered = self.ws.scope.get("subprotocols", [])
        if PROTOCOL not in offered:
            # Accepted first so the close code arrives (a close before it is a bare 403), with the subprotocol
            # offered (a browser fails a handshake ignoring it; subscriptions-transport-ws offers "graphql-ws").
            await self.ws.accept(subprotocol=offered[0] if offered else None)
            await self.ws.close(4406, "Subprotocol not acceptable: use graphql-transport-ws")
            return
        await self.ws.accept(subprotocol=PROTOCOL)
        keepalive = asyncio.create_task(self._keepalive())
        try:
            try:
                first = await asyncio.wait_for(self._receive(), timeout=10.0)
            except TimeoutError:
                await self.close(4408, "Connection initialisation timeout")
                return
            if len(first) > self.max_message:
                await self.close(1009, "Message too big")
                return
            message = self._message(first)
            if message is None or message.get("type") != "connection_init":
                await self.close(4400 if message is None else 4401, "Unauthorized" if message else "Invalid message")
                return
            authorization, tenant, conflict = credentials(message.get("payload"), self.ws.scope)
            if conflict:
                await self.close(4403, "Forbidden: X-Tenant-ID names another tenant than the URL")
                return
            try:
                self.session = await self.operations.open_session(
                    authorization=authorization, tenant_header=tenant, on_end=self._ended,
                    client=self.ws.client.host if self.ws.client else None)
            except AppError as exc:
                await self.close(4403, f"Forbidden: {exc.message}")
                return
            await self._send({"type": "connection_ack"})
            while self._closing is None:
                raw = await self._receive()
                if len(raw) > self.max_message:  # refused before it is parsed (the request body limit)
                    await self.close(1009, "Message too big")
                    return
                message = self._message(raw)
                if message is None:
                    await self.close(4400, "Invalid message")
                    return
                await self._handle(message)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away
        finally:
            keepalive.cancel()
            for task in self.tasks.values():
                task.cancel()
            if self.session is not None:
                self.session.end("connection closed")

    def _message(self, raw: str) -> dict[str, Any] | None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return message if isinstance(message, dict) and isinstance(message.get("type"), str) else None

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ping":
            await self._send({"type": "pong"})
        elif kind == "pong":
            return
        elif kind == "connection_init":
            await self.close(4429, "Too many initialisation requests")
        elif kind == "subscribe":
            key = message.get("id")
            if not isinstance(key, str) or not key:
                await self.close(4400, "Invalid message: subscribe needs an id")
                return
            if key in self.tasks:
                await self.close(4409, f"Subscriber for {key} already exists"[:120])
                return
            self.tasks[key] = asyncio.create_task(self._operation(key, message.get("payload")))
        elif kind == "complete":
            key = message.get("id")
            task = self.tasks.pop(key, None) if isinstance(key, str) else None
            if task is not None:
                task.cancel()
        else:
            await self.close(4400, f"Invalid message type {kind}"[:120])

    async def _operation(self, key: str, payload: Any) -> None:
        assert self.session is not None

        async def emit(result: dict[str, Any]) -> None:
            raw = result.get("__raw__")
            if raw is not None:
                await self._send_raw(b'{"id":' + orjson.dumps(key) + b',"type":"next","payload":' + raw + b"}")
            else:
                await self._send({"id": key, "type": "next", "payload": result})

        try:
            await self.operations.run(self.session, key, payload, emit)
        except Refused as exc:
            await self._send({"id": key, "type": "error", "payload": exc.errors})
            return
        except asyncio.CancelledError:
            raise
        except (WebSocketDisconnect, RuntimeError):
            return
        except Exception:
            log.exception("realtime: operation %s failed", key)
            await self._send({"id": key, "type": "error", "payload": [
                entry(AppError("internal error"))]})
            return
        finally:
            if self.tasks.get(key) is asyncio.current_task():
                del self.tasks[key]
        if self.session is not None and self.session.ended is None and self._closing is None:
            await self._send({"id": key, "type": "complete"})

    def _ended(self, reason: str) -> None:
        """The hub ended the session (access changed): close with 4403."""
        if self._closing is None:
            asyncio.get_running_loop().create_task(self.close(4403, f"Forbidden: {reason}"[:120]))

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.settings.keepalive_seconds)
            with contextlib.suppress(Exception):
                await self._send({"type": "ping"})

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_raw(orjson.dumps(message))

    async def _send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            if self._closing is None and self.ws.application_state == WebSocketState.CONNECTED:
                await self._asgi_send({"type": "websocket.send", "text": data.decode()})

    async def close(self, code: int, reason: str) -> None:
        if self._closing is not None:
            return
        self._closing = (code, reason)
        async with self._send_lock:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason.encode()[:123].decode(errors="ignore"))
        for task in list(self.tasks.values()):
            if task is not asyncio.current_task():
                task.cancel()


async def serve_websocket(operations: Operations, scope: Scope, receive: Receive, send: Send) -> None:
    await WebSocketConnection(operations, WebSocket(scope, receive, send), send).serve()


async def serve_sse(operations: Operations, request: Request, payload: dict[str, Any]) -> Response:
    """One operation as a text/event-stream (GraphQL over SSE, distinct connections mode)."""
    ended: asyncio.Queue[str] = asyncio.Queue()
    if operations.stopping:
        return error_response(Unavailable("the server is shutting down", retryAfter=1))
    try:
        session = await operations.open_session(authorization=request.headers.get("authorization"),
                                                tenant_header=request.headers.get("x-tenant-id"),
                                                on_end=ended.put_nowait,
                                                client=request.client.host if request.client else None)
    except AppError as exc:
        return error_response(exc)
    keepalive = operations.platform.settings.keepalive_seconds

    async def events() -> AsyncIterator[bytes]:
        out: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def emit(result: dict[str, Any]) -> None:
            raw = result.get("__raw__")
            await out.put(b"event: next\ndata: " + (raw if raw is not None else orjson.dumps(result)) + b"\n\n")

        async def operation() -> None:
            try:
                await operations.run(session, "sse", payload, emit)
            except Refused as exc:
                await out.put(b"event: next\ndata: " + orjson.dumps({"errors": exc.errors}) + b"\n\n")
            except Exception:
                log.exception("realtime: SSE operation failed")
                await out.put(b"event: next\ndata: " + orjson.dumps(
                    {"errors": [entry(AppError("internal error"))]}) + b"\n\n")
            finally:
                await out.put(None)

        async def watch_end() -> None:
            await ended.get()
            await out.put(None)

        tasks = [asyncio.create_task(operation()), asyncio.create_task(watch_end())]
        operations.streams.add(ended.put_nowait)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(out.get(), timeout=keepalive)
                except TimeoutError:
                    yield b":\n\n"
                    continue
                if item is None:
                    break
                yield item
            yield b"event: complete\ndata:\n\n"
        finally:
            operations.streams.discard(ended.put_nowait)
            for task in tasks:
                task.cancel()
            session.end("stream closed")

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
