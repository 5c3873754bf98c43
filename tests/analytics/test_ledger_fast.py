"""The integer-coded ledger kernel (gpuledger/analytics/fastledger.py) gives ``attribute``'s rows, for every input.

Three ways in: store-shaped frames coded in Polars (``fastledger.code``), the
job's DuckDB read path (``job.read_chunk``), and the job end to end (the
``ledger`` table against ``job.reference_chunk``). Compared per (unit, kind,
tenant, namespace, pod, rule) with a 1e-9 relative tolerance; nulls must match.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ledger import message

from gpuledger import cli, wire
from gpuledger.sim import scenarios as simscenarios
from gpuledger.sim.fleetsim import FleetSim, demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.analytics import fastledger
from gpuledger.analytics import kinds as K
from gpuledger.sim.accuracy import simulate
from gpuledger.analytics.job import read_chunk, read_frames, reference_chunk, run_attribution
from gpuledger.analytics.ledger import LEDGER_COLUMNS, attribute
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.store import Store

NUM = ["gpu_seconds", "energy_j", "memory_gb_seconds"]
KEYS = [c for c in LEDGER_COLUMNS if c not in NUM]


def _plain(frame: pl.DataFrame) -> pl.DataFrame:
    """Enum/Categorical -> String, integer keys -> Int64; summed per key (two owners may share a tenant)."""
    out = frame.select(LEDGER_COLUMNS).with_columns(
        [pl.col(c).cast(pl.String) for c in KEYS if frame.schema[c] in (pl.Categorical,)
         or isinstance(frame.schema[c], pl.Enum)]
    ).with_columns(pl.col("seq", "gpu_index", "mig_index").cast(pl.Int64))
    return out.group_by(KEYS).agg(
        [pl.when(pl.col(c).is_not_null().any()).then(pl.col(c).sum()).alias(c) for c in NUM],
        rows=pl.len())


def assert_same_ledger(ref: pl.DataFrame, fast: pl.DataFrame) -> None:
    a, b = _plain(ref), _plain(fast)
    both = a.join(b, on=KEYS, how="full", coalesce=True, suffix="_fast", nulls_equal=True)
    if not both.height == a.height == b.height:
        odd = both.filter(pl.col("rows").is_null() | pl.col("rows_fast").is_null())
        with pl.Config(tbl_cols=-1, tbl_width_chars=400, tbl_rows=-1):
            raise AssertionError(f"rows differ: reference {a.height}, fast {b.height}, union {both.height}\n"
                                 f"{odd.drop('agent_id', 'boot_id', 'node', 'model', 'interval_end_ns')}")
    for c in NUM:
        x, y = both[c], both[f"{c}_fast"]
        assert (x.is_null() == y.is_null()).all(), f"{c}: null in one ledger only"
        bad = both.filter((pl.col(c) - pl.col(f"{c}_fast")).abs() > 1e-9 * pl.max_horizontal(pl.col(c).abs(), 1.0))
        assert bad.height == 0, f"{c} differs:\n{bad}"
    assert (both["rows"] == both["rows_fast"]).all()


def _frames(store: Store) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    keys = store.query("SELECT agent_id, boot_id, seq FROM messages ORDER BY ALL")
    f = read_frames(store, keys)
    jobs = store.query("SELECT DISTINCT slurm_job FROM processes WHERE slurm_job IS NOT NULL ORDER BY 1")
    tenants = TenancyRules(slurm_jobs={"4242": "astro"}).tenant_table(
        store.query("SELECT pod_uid, namespace, labels, name FROM pods"), jobs["slurm_job"].to_list())
    devices = f["devices"].sort("agent_id", "boot_id", "seq", "gpu_index", "mig_index")
    return devices, f["processes"], f["allocations"], tenants


def _both_ways(store: Store, shuffle: int | None = None) -> None:
    """code() + ledger() and the job's read path, each against attribute() on the same rows."""
    devices, processes, allocations, tenants = _frames(store)
    ref = attribute(devices.lazy(), processes.lazy(), allocations.lazy(), tenants.lazy()).collect()
    if shuffle is not None:  # rows out of the store's order: the kernel must sort, not mis-attribute
        devices, processes, allocations = (f.sample(fraction=1.0, shuffle=True, seed=shuffle)
                                           for f in (devices, processes, allocations))
    result = fastledger.ledger(fastledger.code(devices, processes, allocations, tenants))
    assert_same_ledger(ref, result.frame())
    keys = store.query("SELECT agent_id, boot_id, seq FROM messages ORDER BY ALL")
    assert_same_ledger(reference_chunk(store, keys, tenants.lazy()),
                       fastledger.ledger(read_chunk(store, keys, tenants.lazy())).frame())


def store_of(*messages: wire.Message) -> Store:
    store = Store()
    store.write_messages([wire.decode(wire.encode(m)) for m in messages])
    return store


# Every sharing mode and fallback of tests/analytics/test_ledger.py, in one message per case.
CASES = {
    "time_sliced": [{"util": 0.8, "energy_mj": 10_000.0, "holders": [("a", 0.25, 0), ("b", 0.25, 1)],
                     "procs": [("a", 3.0), ("b", 1.0)]}],
    "equal_split": [{"util": 0.5, "holders": [("a", 0.5, 0), ("b", 0.5, 1)], "procs": [("a", 0.0), ("b", 0.0)]}],
    "holders_by_share": [{"util": 0.4, "holders": [("a", 0.75, -1), ("b", 0.25, -1)]}],
    "unmeasured": [{"util": math.nan, "holders": [("a", 1.0, -1)]}],
    "mig": [{"migs": [{"profile": "3g.40gb", "fraction": 3 / 7, "holder": "a", "util": 0.5},
                      {"profile": "2g.20gb", "fraction": 2 / 7, "holder": "b"}]}],
    "unsampled_remainder": [{"util": 0.6, "holders": [("b", 0.5, 0), ("c", 0.5, 1)],
                             "procs": [("b", 2.0, 10), ("c", 0.0, 0)]}],
    "over_reporting": [{"util": 0.2, "holders": [("b", 0.5, 0), ("c", 0.5, 1)],
                        "procs": [("b", 2.5, 10), ("c", 0.0, 0)]}],
    "mps_server_only": [{"util": 0.5, "holders": [("a", 0.5, 0), ("b", 0.5, 1)], "procs": [(None, 0.0, 0)]}],
    "pod_less_unheld": [{"util": 0.5, "procs": [(None, 3.0, 10)]}],
    "no_holder": [{"util": 0.7, "energy_mj": 5e5}],
    "slurm": [{"util": 0.5, "procs": [(None, 3.0, 10, "4242"), (None, 1.0, 10, "777")]}],
    "fractional_overcommitted": [{"util": 0.9, "holders": [("a", 0.7, -1), ("b", 0.6, -1)],
                                  "procs": [("a", 5.0), ("b", 1.0), (None, 2.0)]}],
    "zero_shares": [{"util": 0.3, "holders": [("a", 0.0, -1)], "procs": [(None, 0.0, 0)]}],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_ledger_case_matches_the_reference(name: str) -> None:
    _both_ways(store_of(message(CASES[name], seq=0), message(CASES[name], seq=1)), shuffle=1)


def test_all_cases_in_one_chunk_across_messages() -> None:
    gpus = [spec[0] for spec in CASES.values()][:8]
    _both_ways(store_of(*(message(gpus, seq=s) for s in range(4))), shuffle=7)


@pytest.mark.parametrize("build", [
    lambda: FleetSim(simscenarios.timeslice(3, 900.0), seed=3),
    lambda: FleetSim(simscenarios.fractional(4, 900.0), seed=4),
    lambda: FleetSim(simscenarios.mps(5, 900.0, clients_hidden=True), seed=5),
    lambda: FleetSim(simscenarios.mig_mix(6, 900.0), seed=6),
    lambda: demo_fleet(2, 8, seed=5, horizon_s=900.0),
    lambda: demo_fleet(2, 8, seed=9, horizon_s=900.0, quirks=Quirks(
        missing_sample_rate=0.05, process_noise=0.2, silent_process=True, pid_reuse=True, energy_reset=True,
        gpu_lost=True)),
], ids=["timeslice", "fractional", "mps-hidden", "mig", "demo-mild-quirks", "demo-all-quirks-gpu-lost"])
def test_simulated_fleets_the_job_books_what_the_reference_books(build) -> None:
    store = simulate(build(), tick_s=10.0, horizon_s=900.0)  # run_attribution: the fast path
    keys = store.query("SELECT agent_id, boot_id, seq FROM messages ORDER BY ALL")
    tenants = TenancyRules().tenant_table(store.query("SELECT pod_uid, namespace, labels, name FROM pods")).lazy()
    ledger = store.query("SELECT * FROM ledger")
    assert ledger.height > 100
    assert_same_ledger(reference_chunk(store, keys, tenants), ledger)


def test_pods_missing_from_the_tenant_table_are_coded_per_chunk_and_unattributed() -> None:
    store = store_of(message(CASES["time_sliced"] + CASES["slurm"], seq=0))
    keys = store.query("SELECT agent_id, boot_id, seq FROM messages")
    partial = pl.DataFrame({"pod_uid": ["uid-0"], "tenant": ["vision"]}).lazy()  # uid-1 and Slurm jobs unknown
    fast = fastledger.ledger(read_chunk(store, keys, partial)).frame()
    assert_same_ledger(reference_chunk(store, keys, partial), fast)
    assert {"vision", K.UNATTRIBUTED_TENANT} <= set(fast["tenant"].cast(pl.String))


def test_duplicate_device_rows_go_through_the_reference() -> None:
    store = store_of(message(CASES["time_sliced"]))
    devices, processes, allocations, tenants = _frames(store)
    devices = pl.concat([devices, devices])
    ref = attribute(devices.lazy(), processes.lazy(), allocations.lazy(), tenants.lazy()).collect()
    result = fastledger.ledger(fastledger.code(devices, processes, allocations, tenants))
    assert result.fallback
    assert_same_ledger(ref, result.frame())


def test_a_gpu_lost_before_its_identity_was_read_books_under_an_unknown_uuid() -> None:
    m = message([{"util": 0.5, "holders": [("a", 1.0, -1)], "procs": [("a", 1.0)]},
                 {"util": math.nan, "holders": [("b", 0.5, -1)]}])
    m.devices["uuid"][1] = wire.NULL_STR
    m.devices["model"][1] = wire.NULL_STR
    store = store_of(m)
    _both_ways(store)
    run_attribution(store)
    assert "unknown:node-0:1" in set(store.query("SELECT gpu_uuid FROM ledger")["gpu_uuid"])


proc = st.tuples(st.sampled_from(["a", "b", "c", None]),
                 st.one_of(st.just(math.nan), st.just(0.0), st.floats(0, 50)),
                 st.sampled_from([0, 0, 3, 10]),
                 st.sampled_from([None, None, "4242", "777"])).map(
    lambda t: (t[0], t[1], t[2]) if t[0] is not None or t[3] is None else (t[0], t[1], t[2], t[3]))
gpu = st.fixed_dictionaries(
    {
        "util": st.one_of(st.just(math.nan), st.just(0.0), st.floats(0, 1)),
        "energy_mj": st.one_of(st.just(math.nan), st.floats(0, 1e7)),
        "util_samples": st.sampled_from([0, 1, 10]),
        "holders": st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 1 / 3]),
                                      st.integers(-1, 3)), max_size=4),
        "procs": st.lists(proc, max_size=5),
        "migs": st.one_of(
            st.just([]),
            st.lists(st.fixed_dictionaries({"profile": st.sampled_from(["1g.10gb", "3g.40gb"]),
                                            "fraction": st.sampled_from([1 / 7, 3 / 7]),
                                            "holder": st.sampled_from(["a", "b", None]),
                                            "util": st.one_of(st.just(math.nan), st.floats(0, 1))}),
                     min_size=1, max_size=4),
        ),
        "lost": st.booleans(),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.lists(gpu, min_size=1, max_size=4), min_size=1, max_size=3),
       dt_s=st.sampled_from([1.0, 10.0, 60.0]), shuffle=st.one_of(st.none(), st.integers(0, 3)))
def test_store_shaped_inputs_match_the_reference(messages: list[list[dict]], dt_s: float,
                                                 shuffle: int | None) -> None:
    built = []
    for seq, gpus in enumerate(messages):
        m = message(gpus, seq=seq, dt_s=dt_s)
        lost = [i for i, d in enumerate(m.devices) if d["mig_index"] == -1 and gpus[int(d["gpu_index"])]["lost"]]
        m.devices["uuid"][lost] = wire.NULL_STR  # a GPU lost before its identity was read
        for pod in m.pods:  # the builder numbers pods per message: keep uids unique, as Kubernetes does
            pod["uid"] = f"{seq}:{pod['uid']}"
        built.append(m)
    _both_ways(store_of(*built), shuffle=shuffle)


def test_job_end_to_end_in_small_chunks_records_the_rules_version(tmp_path, capsys) -> None:
    db = tmp_path / "g.duckdb"
    gpus = [spec[0] for spec in CASES.values()]
    rules = TenancyRules(version="2026-11-22", slurm_jobs={"4242": "astro"})
    with Store(db) as store:
        store.write_messages([wire.decode(wire.encode(message(gpus, seq=s))) for s in range(7)])
        result = run_attribution(store, rules, chunk_messages=3)  # three chunks
        assert result.messages == 7
        keys = store.query("SELECT agent_id, boot_id, seq FROM messages ORDER BY ALL")
        jobs = store.query("SELECT DISTINCT slurm_job FROM processes WHERE slurm_job IS NOT NULL")["slurm_job"]
        tenants = rules.tenant_table(store.query("SELECT pod_uid, namespace, labels, name FROM pods"),
                                     jobs.to_list()).lazy()
        assert_same_ledger(reference_chunk(store, keys, tenants), store.query("SELECT * FROM ledger"))
        assert store.query("SELECT DISTINCT rules_version FROM attributed")["rules_version"].to_list() == [
            "2026-11-22"]
    assert cli.main(["explain", "--db", str(db), "--tenant", "astro"]) == 0
    assert "tenancy rules 2026-11-22" in capsys.readouterr().out


def test_an_older_file_gains_the_rules_version_column(tmp_path) -> None:
    db = tmp_path / "old.duckdb"
    with Store(db) as store:
        store.execute("DROP TABLE attributed; DROP TABLE schema_migrations")  # as a gpuledger before both
        store.execute("CREATE TABLE attributed (agent_id VARCHAR NOT NULL, boot_id VARCHAR NOT NULL, "
                      "seq UBIGINT NOT NULL, PRIMARY KEY (agent_id, boot_id, seq))")
        store.write_messages([wire.decode(wire.encode(message(CASES["time_sliced"])))])
    with Store(db) as store:  # reopened for writing: the column is added
        assert run_attribution(store, TenancyRules(version="v2")).messages == 1
        assert store.query("SELECT rules_version FROM attributed")["rules_version"].to_list() == ["v2"]


def test_units_and_owners_are_dictionary_encoded() -> None:
    store = store_of(message(CASES["time_sliced"]))
    devices, processes, allocations, tenants = _frames(store)
    frame = fastledger.ledger(fastledger.code(devices, processes, allocations, tenants)).frame()
    for c in ("agent_id", "node", "gpu_uuid", "model", "kind", "tenant", "rule", "sharing"):
        assert isinstance(frame.schema[c], pl.Enum), c
    assert np.isclose(frame["gpu_seconds"].sum(), 10.0)


def test_every_compiled_pass_has_one_signature_whatever_the_input_path() -> None:
    """Store-shaped frames in and out of order and the job's DuckDB read path give the compiled passes the same
    argument types: one compilation (cached on disk) serves every chunk instead of one per dtype mix."""
    store = store_of(message(CASES["time_sliced"] + CASES["mig"] + CASES["slurm"], seq=0),
                     message(CASES["unsampled_remainder"] + CASES["unmeasured"], seq=1))
    devices, processes, allocations, tenants = _frames(store)
    keys = store.query("SELECT agent_id, boot_id, seq FROM messages ORDER BY ALL")
    chunks = [fastledger.code(devices, processes, allocations, tenants),
              fastledger.code(*(f.sample(fraction=1.0, shuffle=True, seed=3) for f in (devices, processes,
                                                                                         allocations)), tenants),
              read_chunk(store, keys, tenants.lazy())]
    for chunk in chunks:
        assert fastledger.ledger(chunk).rows.height > 0
    passes = [fastledger._unit_key, fastledger._holders, fastledger._evidence, fastledger._unit_pass,
              fastledger._busy_rows, fastledger._share_rows]
    assert {p.py_func.__name__: len(p.signatures) for p in passes} == {p.py_func.__name__: 1 for p in passes}
