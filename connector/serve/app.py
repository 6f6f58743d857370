"""The ASGI app of `connector serve`: the import-contract routes, `/healthz`, `/metrics` and
the published OpenAPI document (`/openapi.json`), on FastAPI.

FastAPI because it is a real ASGI stack (Starlette on uvicorn) that publishes an OpenAPI
document from the routes as written, so the document cannot drift from the server. More
routes (webhooks) join through `create_app(routers=...)` or `app.include_router` and get
the same error shape, metrics and access log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import PlainTextResponse, Response

from connector.errors import StoreError
from connector.serve.auth import KeyRing
from connector.serve.errors import install_error_handlers
from connector.serve.invoices import invoice_router
from connector.serve.metrics import ObservedRequests, ServeMetrics, StoreGauges
from connector.settings import AppConfig
from connector.store.serving import ServingReads

# What a host (the daemon) may say about itself on /healthz: status code and body fields.
HealthProbe = Callable[[], tuple[int, dict[str, Any]]]


def _version() -> str:
    try:
        return version("invoice-connector")
    except PackageNotFoundError:
        return "0"


def ops_router(reads: ServingReads, metrics: ServeMetrics, health: HealthProbe | None) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get(
        "/healthz",
        summary="Liveness and store reachability",
        responses={503: {"description": "Stopping, or the store cannot be read."}},
    )
    def healthz() -> Response:
        status, body = health() if health else (200, {"status": "ok"})
        try:
            reads.ping()
            body = {**body, "store": "ok"}
        except StoreError:
            status, body = 503, {**body, "status": "unavailable", "store": "unreachable"}
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={503: {"description": "The store cannot be read."}},
    )
    def prometheus() -> Response:
        try:
            text = generate_latest(metrics.registry)
        except Exception as exc:  # a scrape gets an answer, whatever the store did
            return Response(
                f"store unavailable: {type(exc).__name__}\n", 503, media_type="text/plain"
            )
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return router


BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "Authorization: Bearer <API key> (one key per consumer).",
}


def _publish_bearer_scheme(app: FastAPI) -> None:
    """The OpenAPI document names the bearer scheme the contract endpoints ask for (they
    check the key themselves rather than through a FastAPI security dependency)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["HTTPBearer"] = BEARER_SCHEME
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    config: AppConfig,
    reads: ServingReads,
    *,
    health: HealthProbe | None = None,
    up: Callable[[], bool] = lambda: True,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The app over an opened store. `health` and `up` let a host (the daemon) report its
    own state on /healthz and `connector_up`; `routers` adds endpoints beside the contract."""
    settings = config.serve
    app = FastAPI(
        title="Invoice Connector: MediTrak import API",
        version=_version(),
        description="The connector's store as the MediTrak import contract (list + get-by-id). "
        "Every error answers {success: false, error, code}. See docs/serving.md.",
        docs_url=None,
        redoc_url=None,
    )
    metrics = ServeMetrics()
    metrics.registry.register(StoreGauges(reads, [s.name for s in config.sources], up))
    app.state.reads = reads
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(invoice_router(reads, KeyRing(settings.consumers), settings))
    app.include_router(ops_router(reads, metrics, health))
    for router in routers:
        app.include_router(router)
    from connector.serve.webhooks import attach_webhooks  # light unless webhooks are set

    # Bio Ecko's signed webhooks, when a source has a webhook secret (docs/webhooks.md).
    app.state.webhooks = attach_webhooks(app, config)
    _publish_bearer_scheme(app)
    app.add_middleware(ObservedRequests, metrics=metrics, access_log=settings.access_log)
    return app
