"""The API's one ``/metrics`` and its one request watcher (access log, request series, audit log).

``gpuledger serve --metrics-port PORT`` serves every series below on
``PORT`` (``/metrics``, Prometheus text format), like ``ingest`` and
``attribute`` serve theirs: a port of its own, no token, never behind the
Ingress; who may scrape it is a network question (the chart's
NetworkPolicy, ``networkPolicy.metricsFrom``). The API port (8080) has no
``/metrics``. Without ``--metrics-port`` there are no series at all.

==========================================  ===========  ===================================================
series                                      type         what
==========================================  ===========  ===================================================
gpuledger_api_requests_total                counter      by ``route`` (the route's template, e.g.
                                            ``/v1/showback``; ``unmatched`` for no route), ``method``
                                            and ``status``
gpuledger_api_request_duration_seconds      histogram    by ``route``: first byte in to last byte out
gpuledger_api_cache_requests_total          counter      by ``result`` (hit, miss): the response cache's
                                                         answers to cacheable requests
gpuledger_tenant_budget                     gauge        by ``tenant``, ``currency``, ``month`` (the current
                                                         UTC month): the budgets file's monthly budget; a
                                                         tenant without one has no series (never 0)
gpuledger_tenant_cost_month_to_date         gauge        the tenant's cost this month so far (hourly rollups)
gpuledger_tenant_cost_forecast              gauge        month-to-date extrapolated to the month's end
gpuledger_api_budget_read_failures_total    counter      scrapes whose budget report could not be read
                                                         (``reason``: ``busy``, ``no_database``, ``error``)
==========================================  ===========  ===================================================

The three ``gpuledger_tenant_*`` families are rendered from a fresh budget
report (:func:`~gpuledger.api.routes_business.budgets_body`, idle policy
``idle_policy``) read at most every :data:`REFRESH_S` seconds, never kept
as gauges; the PrometheusRule ``GpuledgerTenantForecastOverBudget``
reads them. They carry every tenant's cost: what a tenant token may not see
on ``/v1/budgets``, whoever reaches the metrics port sees, as for the
agent's per-pod series. A scrape that finds the file held by a writer
renders the last report of the same month read within
:data:`STALE_AFTER_S` (else no tenant series) and counts the failure.

One access-log line per request at INFO on the logger
``gpuledger.api.access``: method, path, status, milliseconds, the token's
*id* (``-`` without a valid token; never the secret: it comes from the
verified principal, not the header) and the client address. The same
watcher appends the ``/v1/`` requests to the audit log
(:mod:`~gpuledger.api.audit`) when one is configured.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpuledger.api import errors as E
from gpuledger.api.audit import PRINCIPAL_KEY, AuditLog
from gpuledger.api.errors import ApiError
from gpuledger.api.reader import Database, Session
from gpuledger.api.respcache import CACHE_KEY
from gpuledger.api.tokens import Principal
from gpuledger.errors import GpuledgerError, StoreError

__all__ = ["CACHE_KEY", "ApiMetrics", "BudgetSeries", "RequestLog"]

access_log = logging.getLogger("gpuledger.api.access")
log = logging.getLogger(__name__)

#: Routes outside the OpenAPI document (the page, its script, the docs themselves).
UNDOCUMENTED = ("/", "/static/{name}", "/docs", "/redoc", "/openapi.json")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: A budget report younger than this (s) is served again without reading the file: the figures change when
#: attribution runs (minutes), the file's version with every ingest flush (seconds), and each read holds the
#: file that ingest's next flush waits for.
REFRESH_S = 60.0
#: How old (s) a budget report may be to stand in for one a busy database could not give.
STALE_AFTER_S = 600.0


class ApiMetrics:
    """The API's series, registered in ``registry`` (``create_app`` adds the budget series there)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("gpuledger_api_requests", "API requests by route template, method and status.",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("gpuledger_api_request_duration_seconds", "API request latency by route template.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.cache = Counter("gpuledger_api_cache_requests", "Cacheable requests by the response cache's result.",
                             ["result"], registry=registry)


_TENANT_SERIES = (
    ("gpuledger_tenant_budget", "budget", "The tenant's monthly budget (budgets file), in the currency."),
    ("gpuledger_tenant_cost_month_to_date", "month_to_date",
     "The tenant's cost in the current UTC month so far, from the hourly rollups."),
    ("gpuledger_tenant_cost_forecast", "forecast",
     "The tenant's month-to-date cost extrapolated linearly to the end of the month."),
)


class BudgetSeries:
    """A collector: the current month's budget report as ``gpuledger_tenant_*`` gauges, read at most every REFRESH_S.

    ``report(session, month)`` is the report (``routes_business.budgets_body`` bound to the app's
    book, budgets and idle policy); ``clock`` gives the time (the month, and the fallback's age).
    """

    def __init__(self, db: Database, report: Callable[[Session, str], dict[str, Any]], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.report, self.clock = db, report, clock
        self._last: tuple[float, dict[str, Any]] | None = None
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()  # scrapes may come at once (one HTTP thread each): one read serves them

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        month = f"{datetime.fromtimestamp(now, UTC):%Y-%m}"
        with self._lock:
            body = self._read(month, now)
            failed = sorted(self._failures.items())
        for name, field, text in _TENANT_SERIES:
            family = GaugeMetricFamily(name, text, labels=["tenant", "currency", "month"])
            tenants, currency = (body["tenants"], body["currency"]) if body else ([], "")
            for t in tenants:
                if t[field] is not None:  # no budget: no series (absent, never 0)
                    family.add_metric([t["tenant"], currency, month], float(t[field]))
            yield family
        failures = CounterMetricFamily("gpuledger_api_budget_read_failures",
                                       "Scrapes whose budget report could not be read, by reason.", labels=["reason"])
        for reason, n in failed:
            failures.add_metric([reason], n)
        yield failures

    def _read(self, month: str, now: float) -> dict[str, Any] | None:
        last = self._last
        if last is not None and last[1]["month"] == month and 0 <= now - last[0] < REFRESH_S:
            return last[1]
        session = Session(self.db)
        try:
            body = self.report(session, month)
        except (ApiError, GpuledgerError, StoreError) as exc:
            code = exc.code if isinstance(exc, ApiError) else None
            reason = "busy" if code is E.DATABASE_BUSY else "no_database" if code is E.NO_DATABASE else "error"
            self._failures[reason] = self._failures.get(reason, 0) + 1
            log.warning("/metrics: no budget report (%s): %s", reason, exc)
            if last is not None and last[1]["month"] == month and now - last[0] <= STALE_AFTER_S:
                return last[1]
            return None
        finally:
            session.close()
        self._last = (now, body)
        return body


class RequestLog:
    """Watches every HTTP request once: its access-log line, its series (``metrics``), its audit entry (``audit``).

    The outermost middleware, so it sees HEAD as HEAD and every status, cached answers included.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics | None = None, audit: AuditLog | None = None) -> None:
        self.app, self.metrics, self.audit = app, metrics, audit
        self._templates: list[tuple[re.Pattern[str], str]] | None = None  # from the OpenAPI paths, on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared with inner scopes: the principal and cache result
        status = 500  # an exception that escapes the app is answered 500 by the server
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
            if self.audit is not None and scope["path"].startswith("/v1/"):
                self.audit.request(scope, status, who)
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


class LakeSnapshotAge:
    """``gpuledger_lake_snapshot_age_seconds``: how old the lake snapshot a replica serves is (``serve --lake``).

    Seconds since the replica last found its local copy equal to the lake; it
    grows while the lake does not answer (the last complete copy is served).
    No sample before the first sync. Rendered at each scrape (a snapshot, not a mutated gauge).
    """

    def __init__(self, age: Callable[[], float | None]) -> None:
        self.age = age

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("gpuledger_lake_snapshot_age_seconds",
                                   "Seconds since this API replica's copy of the lake was last found current")
        age = self.age()
        if age is not None:
            family.add_metric([], age)
        yield family
