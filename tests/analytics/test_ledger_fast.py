"""The integer-key busy split (analytics/fastsplit.py) agrees with the reference ledger."""

from __future__ import annotations

import polars as pl
import pytest

from gpuledger.agent import simscenarios
from gpuledger.agent.sim import FleetSim, demo_fleet
from gpuledger.analytics import kinds as K
from gpuledger.analytics.fastsplit import busy_split
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.analytics.accuracy import simulate

KEY = ["agent_id", "boot_id", "seq", "gpu_index", "mig_index"]


@pytest.mark.parametrize("build", [
    lambda: FleetSim(simscenarios.timeslice(3, 900.0), seed=3),
    lambda: demo_fleet(2, 8, seed=5, horizon_s=900.0),
], ids=["timeslice", "demo-mild-quirks"])
def test_fast_busy_split_equals_the_ledger_busy_by_process_rows(build) -> None:
    store = simulate(build(), tick_s=10.0, horizon_s=900.0)
    devices = store.query("SELECT * FROM devices ORDER BY agent_id, boot_id, seq, gpu_index, mig_index")
    processes = store.query("SELECT * FROM processes ORDER BY agent_id, boot_id, seq, gpu_index, mig_index, pid")
    tenants = TenancyRules().tenant_table(store.query("SELECT pod_uid, namespace, labels FROM pods"))
    fast = busy_split(devices, processes, tenants)
    units = devices.with_row_index("unit").select(pl.col("unit").cast(pl.Int64), *KEY)
    fast = fast.join(units, on="unit").with_columns(pl.col("pod_uid", "tenant", "rule").cast(pl.String))
    rules = (K.RULE_PROCESS_SAMPLES, K.RULE_UNSAMPLED_REMAINDER, K.RULE_EQUAL_PROCESSES)
    ref = store.query(f"""
        SELECT l.agent_id, l.boot_id, l.seq, l.gpu_index, l.mig_index, l.tenant, l.rule,
               sum(l.gpu_seconds) AS ref_s
        FROM ledger l WHERE kind = 'busy' AND rule IN {rules} GROUP BY ALL""")
    got = fast.group_by([*KEY, "tenant", "rule"]).agg(fast_s=pl.col("gpu_seconds").sum())
    both = ref.with_columns(pl.col("gpu_index", "mig_index").cast(pl.Int64)).join(
        got.with_columns(pl.col("gpu_index", "mig_index").cast(pl.Int64)),
        on=[*KEY, "tenant", "rule"], how="full", coalesce=True)
    assert both.height > 100
    diff = both.select((pl.col("ref_s").fill_null(0) - pl.col("fast_s").fill_null(0)).abs().max()).item()
    assert diff < 1e-9
