"""The API's own Prometheus metrics and its access log (outermost ASGI middleware).

==========================================  ===========  ===================================================
series                                      type         what
==========================================  ===========  ===================================================
gpuledger_api_requests_total                counter      by ``route`` (the route's template, e.g.
                                            ``/v1/showback``; ``unmatched`` for no route), ``method``
                                            and ``status``
gpuledger_api_request_duration_seconds      histogram    by ``route``: first byte in to last byte out
gpuledger_api_cache_requests_total          counter      by ``result`` (hit, miss): the response cache's
                                                         answers to cacheable requests
==========================================  ===========  ===================================================

Served by ``gpuledger serve --metrics-port PORT`` on its own port (not behind
the Ingress). The access log is one line per request at INFO on the logger
``gpuledger.api.access``: method, path, status, milliseconds, the token's
*id* (``-`` without a valid token; never the secret: it comes from the
verified principal, not the header) and the client address.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpuledger.api.audit import PRINCIPAL_KEY
from gpuledger.api.respcache import CACHE_KEY
from gpuledger.api.tokens import Principal

__all__ = ["CACHE_KEY", "ApiMetrics", "RequestMetrics"]

access_log = logging.getLogger("gpuledger.api.access")

#: Routes outside the OpenAPI document (the page, its script, the docs themselves).
UNDOCUMENTED = ("/", "/static/{name}", "/docs", "/redoc", "/openapi.json")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiMetrics:
    """The API's series, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("gpuledger_api_requests", "API requests by route template, method and status.",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("gpuledger_api_request_duration_seconds", "API request latency by route template.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.cache = Counter("gpuledger_api_cache_requests", "Cacheable requests by the response cache's result.",
                             ["result"], registry=registry)


class RequestMetrics:
    """Counts and times every HTTP request, and writes its access-log line."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics | None = None) -> None:
        self.app, self.metrics = app, metrics
        self._templates: list[tuple[re.Pattern[str], str]] | None = None  # from the OpenAPI paths, on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared with inner scopes: the principal and cache result
        status = 500
        t0 = time.perf_counter()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            seconds = time.perf_counter() - t0
            who: Principal | None = state.get(PRINCIPAL_KEY)
            client = scope.get("client")
            access_log.info("%s %s %d %.1fms token=%s client=%s", scope["method"], scope["path"], status,
                            seconds * 1000, who.token_id if who else "-", client[0] if client else "-")
            if self.metrics is not None:
                route = self._route(scope)
                self.metrics.requests.labels(route, scope["method"], str(status)).inc()
                self.metrics.latency.labels(route).observe(seconds)
                if state.get(CACHE_KEY) in ("hit", "miss"):
                    self.metrics.cache.labels(state[CACHE_KEY]).inc()

    def _route(self, scope: Scope) -> str:
        """The template of the route that matches (bounded label values), else ``unmatched``."""
        if self._templates is None:
            app: Any = scope.get("app")
            paths = list(app.openapi().get("paths", {})) if hasattr(app, "openapi") else []
            self._templates = [(re.compile("^" + re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(p)) + "$"), p)
                               for p in [*paths, *UNDOCUMENTED]]
        path = scope["path"]
        return next((template for pattern, template in self._templates if pattern.match(path)), "unmatched")
