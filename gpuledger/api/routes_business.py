"""``/v1/economics``: fleet economics of a month (admin, finance), from the hourly rollups.

Per node pool and GPU model: utilization, allocation, efficiency, the owned
fleet's cost per used GPU-hour, and what the used and allocated hours would
have cost rented on demand, with the break-even utilization
(:mod:`gpuledger.analytics.economics`; docs/economics.md). The app's cloud
rates and node pools come from ``create_app(cloud_rates=..., node_pools=...)``
(``gpuledger serve --cloud-rates --node-pools``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from gpuledger.analytics import economics as econ
from gpuledger.api.auth import session
from gpuledger.api.errors import ERROR_RESPONSES
from gpuledger.api.params import MONTH, parse_month
from gpuledger.api.reader import Database, Session

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.get("/economics", tags=["business"],
            summary="Fleet economics per node pool and GPU model: utilization, cost per used GPU-hour, "
            "rent vs own (admin, finance)")
def economics(request: Request, month: str = MONTH, s: Session = Depends(session, scope="function")) -> dict[str, Any]:
    month = parse_month(month)
    db: Database = request.app.state.db
    book, rates, pools = request.app.state.book, request.app.state.cloud_rates, request.app.state.node_pools

    def compute() -> dict[str, Any]:
        s.query("SELECT 1 FROM ledger_hourly LIMIT 0")  # 503 with a hint on a file without rollups
        rows, pending = econ.read_month(s.store, month)
        return econ.report_dict(month, econ.economics(rows, book, rates, pools), rates, pending)

    return db.cached(("economics", month), compute)
