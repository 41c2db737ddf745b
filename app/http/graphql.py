"""POST/GET /graphql following the GraphQL-over-HTTP spec, plus GraphiQL.

Written directly on Starlette (not strawberry's view) to own the HTTP semantics:
media-type negotiation (`application/graphql-response+json` answered in kind), 4xx for
requests that are not valid GraphQL, 405 for mutations over GET, a body-size limit, and
one place that classifies, masks and logs errors.
"""

from __future__ import annotations

import logging
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    SelectionSetNode,
    get_named_type,
    get_operation_ast,
    parse,
    validate,
)
from graphql import OperationType as AstOperationType
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult as StrawberryResult
from strawberry.types.graphql import OperationType

from app.errors import (
    AppError,
    CommitOutcomeUnknown,
    InvalidInput,
    QueryTooComplex,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from app.graphql.context import Context
from app.graphql.engine import compiled, direct
from app.graphql.schema import TenantrySchema
from app.http.errors import (
    GRAPHQL_RESPONSE,
    JSON,
    RequestError,
    as_unavailable,
    error_response,
    format_graphql_error,
    graphql_status,
    is_request_error,
)
from app.http.negotiation import negotiate, wants_event_stream
from app.http.payload import read_payload, unpack
from app.http.persisted import PersistedQueries, PersistedQueryError, load_trusted
from app.http.routing import tenant_path
from app.http.subscriptions import Operations, serve_sse, serve_websocket
from app.http.tracing import annotate
from app.logs import BufferedLineHandler
from app.runtime import idempotency
from app.runtime.platform import Platform

log = logging.getLogger("tenantry.graphql")
GRAPHIQL_DIR = Path(__file__).parent / "static" / "graphiql"

# Which path answered (README, "Compiled reads"): the generic one sends no header.
_COMPILED = {"tenantry-read-path": "compiled"}
_PARTIAL = {"tenantry-read-path": "partly compiled"}  # some root fields in SQL, the others executed
_DIRECT = {"tenantry-read-path": "direct"}  # a mutation run without graphql-core's executor


class GraphQLLane:
    """ASGI middleware answering /graphql and /t/<tenant>/graphql (app.http.routing) directly: Starlette's
    router and wrappers cost a tenth of a small compiled read's CPU and do nothing for this endpoint,
    which classifies its own errors. Inside the request-id and CORS middleware, so both still apply."""

    def __init__(self, app: ASGIApp, endpoint: GraphQLEndpoint) -> None:
        self.app, self.endpoint = app, endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        routed = tenant_path(scope) if scope["type"] in ("http", "websocket") else None
        if routed is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await serve_websocket(self.endpoint.operations, routed[0], receive, send)
        else:
            response = error_response(InvalidInput("X-Tenant-ID names another tenant than the URL", field="X-Tenant-ID")
                                      ) if routed[1] else await self.endpoint.handle(Request(routed[0], receive, send))
            await response(routed[0], receive, send)


class GraphQLEndpoint:
    def __init__(self, schema: TenantrySchema, platform: Platform, tracer: Any | None = None) -> None:
        self.schema = schema
        self.platform = platform
        self.tracer = tracer  # OpenTelemetry (app.http.tracing), or None: no spans, no cost
        settings = platform.settings
        self.planner = compiled.Planner(schema._schema, max_tokens=settings.max_query_tokens,
                                        extra_rules=schema.extra_validation_rules) if settings.compiled_reads else None
        trusted = load_trusted(settings.trusted_documents) if settings.trusted_documents else None
        self.persisted = PersistedQueries(trusted=trusted)
        # Whether a document asks for __schema or __type, per document (production asks it of each request).
        self._introspects = lru_cache(maxsize=1024)(lambda query: _introspects(schema, query))
        # Subscriptions and other operations over WebSockets and SSE.
        self.operations = Operations(platform, schema, self.persisted)
        # Our own page and vendored build (app/http/static/graphiql): no CDN, works offline.
        self._ide_html = (GRAPHIQL_DIR / "index.html").read_text()

    async def handle(self, request: Request) -> Response:
        if self.tracer is None:
            return await self._measured(request)
        from opentelemetry.trace import SpanKind  # present whenever a tracer is: the otel extra

        with self.tracer.start_as_current_span("graphql", kind=SpanKind.SERVER) as span:
            response = await self._measured(request)
            fields = getattr(getattr(request.state, "context", None), "log_fields", None) or {}
            annotate(span, {"http.request.method": request.method, "http.response.status_code":
                            response.status_code, "tenantry.request_id": request.state.request_id,
                            "tenantry.tenant": fields.get("tenant"), "graphql.operation.name": fields.get("operation"),
                            "tenantry.error_code": fields.get("code")})
            return response

    async def _measured(self, request: Request) -> Response:
        started = time.perf_counter()
        metrics = self.platform.metrics
        metrics.in_flight.inc()
        try:
            response = await self._handle(request)
        finally:
            metrics.in_flight.dec()
        fields = getattr(getattr(request.state, "context", None), "log_fields", None) or {}
        finished = time.perf_counter()
        metrics.observe(fields.get("operation"), fields.get("code") or ("ok" if response.status_code < 400 else
                                                                        str(response.status_code)),
                        finished - started)
        if metrics.pool_due(finished):
            pool = self.platform.db.app.pool
            metrics.pool_checked_out.set(pool.checkedout())  # type: ignore[attr-defined]
            metrics.waiting.set(self.platform.gate.in_flight.waiting)
            metrics.pool_capacity.set(pool.size() + self.platform.settings.pool_overflow)  # type: ignore[attr-defined]
        _access_log(request, response, started)
        return response

    async def _handle(self, request: Request) -> Response:
        request_id: str = request.state.request_id
        try:
            if request.method == "GET" and self._wants_ide(request):
                if not self.platform.settings.graphiql:
                    raise RequestError(404, "GraphiQL is disabled (TENANTRY_GRAPHIQL=false)")
                return HTMLResponse(self._ide_html)
            if wants_event_stream(request):
                return await serve_sse(self.operations, request, await read_payload(request, self.platform.settings))
            media_type = negotiate(request.headers.get("accept", ""))
            payload = await read_payload(request, self.platform.settings)
            query, variables, operation_name = unpack(payload, self.persisted,
                                                      request.headers.get("authorization"),
                                                      max_bytes=self.platform.settings.max_document_bytes)
        except PersistedQueryError as exc:
            return error_response(exc, media_type)
        except RequestError as exc:
            return error_response(exc, JSON)
        allowed = {OperationType.QUERY} if request.method == "GET" else {
            OperationType.QUERY, OperationType.MUTATION}
        context = Context.of(
            self.platform,
            request_id=request_id,
            authorization=request.headers.get("authorization"),
            tenant_header=request.headers.get("x-tenant-id"),
            client=request.client.host if request.client else None,
        )
        request.state.context = context
        key = request.headers.get("idempotency-key") if request.method == "POST" else None
        try:
            admission = context.access.admit(context.client)
            anonymous_limit = self.platform.settings.max_anonymous_document_bytes
            if admission.startswith("client:") and anonymous_limit and len(query) > anonymous_limit:
                # Signing in, refreshing, signing up need small documents; a caller without a credential
                # gets no large parse of its own choosing.
                return error_response(RequestError(
                    413, f"without a credential a document may have {anonymous_limit} characters at most",
                    code="QUERY_TOO_COMPLEX"), media_type)
            async with self.platform.gate.in_flight.slot(admission):
                return await self._run(context, query, variables, operation_name, allowed, media_type, key)
        except (Unavailable, RateLimited) as exc:  # no in-flight slot, or anonymous and too fast: nothing ran
            return error_response(exc, media_type)

    async def _run(self, context: Context, query: str, variables: dict[str, Any] | None, operation_name: str | None,
                   allowed: set[OperationType], media_type: str, idempotency_key: str | None) -> Response:
        try:  # refused before anything runs, SQL included (the compiled path too)
            context.usage["query_cost"] = self.operations.costs.check(query, operation_name, variables)
        except QueryTooComplex as exc:
            await context.finish(commit=False)
            response = error_response(exc, media_type)
            response.status_code = 400 if media_type == GRAPHQL_RESPONSE else 200  # as for a request error
            return response
        if self.platform.settings.production and self._introspects(query):
            try:
                await context.access.verified()
            except AppError:  # a verified caller, not just any Authorization header
                await context.finish(commit=False)
                return error_response(Unauthenticated("introspection needs authentication in production"), media_type)
        claim = None
        if idempotency_key is not None:
            try:
                claim = await self._claim(context, idempotency_key, query, variables, operation_name)
                stored = await idempotency.claim(context.management_db, claim, now=self.platform.clock()) \
                    if claim else None
            except Exception as exc:  # AppErrors and a failing database alike: answered, not raised
                refusal = exc if isinstance(exc, AppError) else as_unavailable(exc)
                if refusal is None:
                    raise
                await _abandon(context)
                return error_response(refusal, media_type)
            if stored is not None:  # a retry: the first answer, nothing run again
                await context.finish(commit=False)
                return Response(stored, media_type=media_type, headers={"idempotent-replayed": "true"})
        # The compiled path's answer; or its roots' JSON, execution answering the others; or None: all executed.
        partial = await self._compiled(context, query, variables, operation_name, media_type) \
            if self.planner is not None and claim is None else None
        if isinstance(partial, Response):
            return partial
        executed = await self._execute(context, query, variables, operation_name, allowed, media_type)
        if isinstance(executed, Response):
            return executed
        result, answered = executed
        merged = partial.merged(result.data) if partial is not None else result.data
        data, errors, committed = await self._commit(context, claim, merged, list(result.errors or []))
        response = self._answer(context, data, errors, committed, media_type, query, operation_name)
        if partial is not None or answered:
            response.headers.update(_PARTIAL if partial is not None else _DIRECT)
        return response

    async def _execute(self, context: Context, query: str, variables: dict[str, Any] | None,
                       operation_name: str | None, allowed: set[OperationType],
                       media_type: str) -> tuple[ExecutionResult | StrawberryResult, bool] | Response:
        """The execution result, and whether the direct path answered (a mutation answered in scalars
        without graphql-core's executor: app.graphql.engine.direct); or the request error's response."""
        mutation = self.planner.mutation(query, operation_name) \
            if self.planner is not None and OperationType.MUTATION in allowed else None
        try:
            answered = await direct.run(self.schema._schema, mutation, context, variables) if mutation else None
            return answered or await self.schema.execute(
                query, variable_values=variables, context_value=context, operation_name=operation_name,
                allowed_operation_types=allowed,
            ), answered is not None
        except InvalidOperationTypeError:
            await context.finish(commit=False)
            return error_response(RequestError(405, "mutations are only accepted over POST", {"Allow": "POST"}),
                                  media_type)
        except MissingQueryError:
            await context.finish(commit=False)
            return error_response(RequestError(400, "no GraphQL query in the request"), media_type)
        except CannotGetOperationTypeError as exc:
            await context.finish(commit=False)
            return error_response(RequestError(400, exc.as_http_error_reason()), media_type)
        except BaseException:
            await context.finish(commit=False)
            raise

    async def _commit(self, context: Context, claim: idempotency.Claim | None, data: Any,
                      errors: list[GraphQLError]) -> tuple[Any, list[GraphQLError], bool]:
        """Finish the request's transaction: COMMIT when nothing failed (with the idempotent answer,
        kept exactly when the mutation's writes are), else ROLLBACK. What the client is told."""
        committed = not errors
        try:
            if claim is not None and committed:  # a secret is shown once: a retry is told it ran
                answer = SECRET_NOT_REPLAYED if claim.secret else orjson.dumps({"data": data})
                await idempotency.remember(context.management_db, claim, answer, now=self.platform.clock())
            await context.finish(commit=committed)
        except CommitOutcomeUnknown as exc:
            log.warning("connection lost during COMMIT [request %s]: outcome unknown", context.request_id)
            self.platform.metrics.database_errors.labels("commit_unknown").inc()
            return None, [GraphQLError(exc.message, original_error=exc)], False
        except Exception as exc:
            lost = as_unavailable(exc)
            if lost is not None:  # the database went away (or timed the request out) before COMMIT: nothing saved
                await _abandon(context)
                return None, [GraphQLError(lost.message, original_error=lost)], False
            log.exception("commit failed", extra={"request_id": context.request_id})
            return None, [GraphQLError("could not save the changes", original_error=RuntimeError())], False
        if errors and data is not None and context.wrote_tenant_data:
            # The request's data-plane writes were rolled back together: report none of them.
            data = None
        return data, errors, committed

    async def _compiled(self, context: Context, query: str, variables: dict[str, Any] | None,
                        operation_name: str | None, media_type: str) -> Response | compiled.Answer | None:
        """The answer by the compiled read path; or the compiled roots' part of it, the others to be
        executed (`Context.answered_roots` tells execution which to leave out); or None when this
        request takes the generic path whole."""
        assert self.planner is not None
        plan = self.planner.plan(query, operation_name)
        if plan is None:
            return None
        try:
            answer = await compiled.run(self.planner, plan, context, variables)
        except compiled.Fallback:
            return None
        except Exception as exc:  # the statement failed: reported as any resolver's failure would be
            await context.finish(commit=False)
            return self._answer(context, None, [GraphQLError(str(exc), original_error=exc)], False, media_type,
                                query, operation_name)
        if answer.rest:
            context.answered_roots = frozenset(answer.pieces)
            return answer
        await context.finish(commit=True)  # already committed with the statement, unless an audit waits
        self._meter(context, True, [])
        routed = context.access.routed_or_none
        context.log_fields = {"tenant": routed.tenant.id if routed else None,
                              "operation": operation_name or _first_operation_name(query), "code": None}
        return Response(b'{"data":' + answer.data() + b"}", media_type=media_type, headers=_COMPILED)

    def _answer(self, context: Context, data: Any, errors: list[GraphQLError], committed: bool, media_type: str,
                query: str, operation_name: str | None) -> Response:
        request_id = context.request_id
        formatted = [format_graphql_error(e, request_id, context) for e in errors]
        self._meter(context, committed, formatted)
        codes = {f.get("extensions", {}).get("code") for f in formatted}
        # A request error (unparsable or invalid document, variables that do not coerce): nothing
        # ran, so the body has no `data` (GraphQL spec). GraphQL-over-HTTP: 4xx for the
        # graphql-response+json media type, 200 for legacy application/json clients.
        request_error = data is None and bool(errors) and all(is_request_error(e) for e in errors)
        body: dict[str, Any] = {} if request_error else {"data": data}
        if formatted:
            body["errors"] = formatted
        status, headers = graphql_status(formatted, request_error=request_error, media_type=media_type)
        routed = context.access.routed_or_none
        context.log_fields = {"tenant": routed.tenant.id if routed else None,
                              "operation": operation_name or _first_operation_name(query),
                              "code": next((str(c) for c in codes if c), None)}
        return Response(orjson.dumps(body), status_code=status, media_type=media_type, headers=headers)

    async def _claim(self, context: Context, key: str, query: str, variables: dict[str, Any] | None,
                     operation_name: str | None) -> idempotency.Claim | None:
        """The idempotency claim of a mutation request, or None (not a mutation, or a request that
        cannot run: execution then reports why)."""
        idempotency.check_key(key)
        try:
            document = parse(query)
            operation = get_operation_ast(document, operation_name)
        except GraphQLError:
            return None
        if operation is None or operation.operation != AstOperationType.MUTATION:
            return None
        try:
            routed = await context.access.routed()
        except AppError:
            return None
        actor = routed.actor
        return idempotency.Claim(tenant_id=routed.tenant.id, caller=f"{actor.type}:{actor.id}", key=key,
                                 request_hash=idempotency.request_hash(query, variables, operation_name),
                                 secret=_mints_secrets(self.schema._schema, document, operation))

    def _meter(self, context: Context, committed: bool, errors: list[dict[str, Any]]) -> None:
        """Count the request for its tenant (and its resources, if they were committed)."""
        routed = context.access.routed_or_none
        tenant_id = routed.tenant.id if routed else None
        codes = [str(e["extensions"]["code"]) for e in errors if "extensions" in e]
        self.platform.metrics.record(tenant_id, device=context.device_request, error_codes=codes)
        if tenant_id is None or not self.platform.settings.metering:
            return
        counts = {"request_count": 1, "device_request_count": int(context.device_request),
                  "query_cost": context.usage.get("query_cost", 0)}  # asked for, whatever the outcome
        if committed:
            counts.update(context.usage)
        self.platform.meter.add(tenant_id, counts)

    @staticmethod
    def _wants_ide(request: Request) -> bool:
        return "text/html" in request.headers.get("accept", "") and "query" not in request.query_params


access_log = logging.getLogger("tenantry.access")
_OPERATION = re.compile(r"^\s*(?:query|mutation|subscription)\s+([_A-Za-z][_0-9A-Za-z]*)")


async def _abandon(context: Context) -> None:
    """Roll the request back after the database failed under it: the connection may be gone too,
    and the client is told UNAVAILABLE whatever this ROLLBACK meets."""
    try:
        await context.finish(commit=False)
    except Exception:  # the connection is discarded either way; the answer is decided
        log.debug("rollback after a database failure failed too", exc_info=True)


def _first_operation_name(query: str) -> str | None:
    """The document's (first) operation name, for the log, without parsing again."""
    match = _OPERATION.match(query)
    return match.group(1) if match else None


def _access_log(request: Request, response: Response, started: float) -> None:
    """One structured line per GraphQL request: request id, tenant, operation, status, error code,
    duration (JSON fields with TENANTRY_LOG_FORMAT=json)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    context = getattr(request.state, "context", None)
    fields = dict(getattr(context, "log_fields", None) or {})
    duration = round((time.perf_counter() - started) * 1000, 2)
    extra = {"request_id": request.state.request_id, "method": request.method, "path": request.scope["path"],
             "status": response.status_code, "duration_ms": duration, **fields}
    handlers = access_log.handlers
    if not access_log.propagate and len(handlers) == 1 and isinstance(handlers[0], BufferedLineHandler):
        handlers[0].write_line(access_log.name, f"{request.method} {extra['path']} {response.status_code} "
                               f"{duration:.1f}ms tenant={fields.get('tenant') or '-'} "
                               f"op={fields.get('operation') or '-'} code={fields.get('code') or '-'}", extra)
        return
    access_log.info("%s %s %d %.1fms tenant=%s op=%s code=%s", request.method, extra["path"],
                    response.status_code, duration, fields.get("tenant") or "-", fields.get("operation") or "-",
                    fields.get("code") or "-", extra=extra)


# Mutation results that hand out a credential, shown once: never kept for a replay (the idempotency
# table would hold it in clear and give it to whoever retries with the key).
SECRET_TYPES = frozenset({"CreatedApiToken", "CreatedDeviceToken", "AuthPayload"})
SECRET_NOT_REPLAYED = orjson.dumps({"data": None, "errors": [{
    "message": "this request already ran with this Idempotency-Key; its answer held a secret, which is shown "
               "only once", "extensions": {"code": "CONFLICT"}}]})


def _mints_secrets(schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode) -> bool:
    """Whether a mutation selects a root field whose result type holds a secret (aliases and
    fragments included)."""
    assert schema.mutation_type is not None
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    pending: list[SelectionSetNode] = [operation.selection_set]
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FieldNode):
                field = schema.mutation_type.fields.get(selection.name.value)
                if field is not None and get_named_type(field.type).name in SECRET_TYPES:
                    return True
            elif isinstance(selection, InlineFragmentNode):
                pending.append(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value in fragments:
                pending.append(fragments[selection.name.value].selection_set)
    return False


def _introspects(schema: TenantrySchema, query: str) -> bool:
    """Whether a document asks for __schema or __type (graphql-core's own rule decides)."""
    try:
        document = parse(query)
    except GraphQLError:
        return False  # execution reports the syntax error
    return bool(validate(schema._schema, document, [NoSchemaIntrospectionCustomRule]))
