"""The integer-coded ledger kernel (``ledger.attribute_chunk``) gives ``ledger.attribute``'s rows, for every input.

The whole ledger, the unknown-holders rule included (messages whose agent could
not read the allocations). Three ways in: store-shaped frames coded in Polars
(``ledger.chunk_from_frames``), the
job's DuckDB read path (``job.read_chunk``), and the job end to end (the
``ledger`` table against ``job.reference_chunk``). Compared per (unit, kind,
tenant, namespace, pod, rule) with a 1e-9 relative tolerance; nulls must match.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger import cli, split, wire
from gpuledger.analytics import kinds as K
from gpuledger.analytics import ledger as L
from gpuledger.analytics.job import read_chunk, read_frames, reference_chunk, run_attribution
from gpuledger.analytics.ledger import LEDGER_COLUMNS, attribute, attribute_chunk, chunk_from_frames
from gpuledger.analytics.ledger import passes as P
from gpuledger.analytics.ledger.columns import KINDS, RULES
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.sim import scenarios as simscenarios
from gpuledger.sim.accuracy import simulate
from gpuledger.sim.fleetsim import FleetSim, demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.store import Store
from tests.support.ledger_inputs import CASES, gpu, message

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


def _frames(store: Store) -> L.Frames:
    keys = store.query("SELECT agent_id, boot_id, seq FROM messages ORDER BY ALL")
    f = read_frames(store, keys)
    jobs = store.query("SELECT DISTINCT slurm_job FROM processes WHERE slurm_job IS NOT NULL ORDER BY 1")
    tenants = TenancyRules(slurm_jobs={"4242": "astro"}).tenant_table(
        store.query("SELECT pod_uid, namespace, labels, name FROM pods"), jobs["slurm_job"].to_list())
    devices = f["devices"].sort("agent_id", "boot_id", "seq", "gpu_index", "mig_index")
    return L.Frames(devices, f["processes"], f["allocations"], tenants, f["allocations_unavailable"])


def _both_ways(store: Store, shuffle: int | None = None) -> pl.DataFrame:
    """chunk_from_frames() + attribute_chunk() and the job's read path, each against attribute() on the same
    rows; returns the reference's ledger."""
    frames = _frames(store)
    ref = attribute(*(f.lazy() for f in frames)).collect()
    if shuffle is not None:  # rows out of the store's order: the kernel must sort, not mis-attribute
        frames = frames._replace(**{name: getattr(frames, name).sample(fraction=1.0, shuffle=True, seed=shuffle)
                                    for name in ("devices", "processes", "allocations")})
    assert_same_ledger(ref, attribute_chunk(chunk_from_frames(*frames)).frame())
    keys = store.query("SELECT agent_id, boot_id, seq FROM messages ORDER BY ALL")
    assert_same_ledger(reference_chunk(store, keys, frames.tenants.lazy()),
                       attribute_chunk(read_chunk(store, keys, frames.tenants.lazy())).frame())
    return ref


def store_of(*messages: wire.Message) -> Store:
    store = Store()
    store.write_messages([wire.decode(wire.encode(m)) for m in messages])
    return store




REASON = "PodResourcesError: kubelet PodResources List failed: connection refused"


def blind(m: wire.Message, drop_allocations: bool = True) -> wire.Message:
    """The message of an agent that could not read the allocations (it then reports none)."""
    return replace(m, extra={"allocations_unavailable": REASON},
                   allocations=wire.empty("allocations") if drop_allocations else m.allocations)


@pytest.mark.parametrize("holders", ["read", "unknown", "unknown_but_listed"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_ledger_case_matches_the_reference(name: str, holders: str) -> None:
    """Each case with the allocations read, not read (none reported), and flagged while some are listed
    (the rule must not depend on the agent's having sent none)."""
    ms = [message(CASES[name], seq=0), message(CASES[name], seq=1)]
    if holders != "read":
        ms[1] = blind(ms[1], drop_allocations=holders == "unknown")
    ref = _both_ways(store_of(*ms), shuffle=1)
    rules = set(ref.filter(pl.col("seq") == 1)["rule"])
    if holders == "unknown":  # nothing is unallocated by nobody: unknown holders, or the pods that ran
        assert K.RULE_UNALLOCATED not in rules and K.RULE_IDLE_SHARE not in rules


def test_unknown_holders_idle_goes_once_to_each_pod_that_ran_whatever_its_busy_rules() -> None:
    """A pod with a sampled and an unsampled process, beside another pod; the samples explain 3 of 4 s busy,
    so part of busy is nobody's (unplaced_remainder): the GPU's idle is split among the pods that ran, each
    once -- nobody is not a holder: 6 s idle, two pods, 3 s each."""
    m = message([{"util": 0.4, "procs": [("a", 2.0, 10), ("a", 0.0, 0), ("b", 1.0, 10)]}])
    procs = m.processes.copy()
    procs["pod"][1] = procs["pod"][0]  # the builder makes a pod per row: the unsampled process is the first pod's
    ref = _both_ways(store_of(blind(replace(m, processes=procs))), shuffle=2)
    busy = ref.filter(pl.col("kind") == K.BUSY)
    assert set(busy.filter(pl.col("pod") == "p0")["rule"]) == {K.RULE_PROCESS_SAMPLES}
    assert set(busy.filter(pl.col("pod").is_null())["rule"]) == {K.RULE_UNPLACED_REMAINDER}
    idle = ref.filter(pl.col("kind") != K.BUSY).sort("pod")
    assert idle.select("pod", "kind", "rule").rows() == [
        ("p0", K.ALLOCATED_IDLE, K.RULE_IDLE_PROCESS_HOLDERS), ("p2", K.ALLOCATED_IDLE, K.RULE_IDLE_PROCESS_HOLDERS)]
    assert idle["gpu_seconds"].to_list() == pytest.approx([3.0, 3.0])


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
    # Every third tick of every agent blind (allocations unread, none stored): unknown holders, both paths.
    blinded = "seq % 3 = 0"
    store.execute(f"UPDATE messages SET allocations_unavailable = '{REASON}' WHERE {blinded}")
    store.execute(f"DELETE FROM allocations WHERE {blinded}")
    reference = reference_chunk(store, keys, tenants)
    assert_same_ledger(reference, attribute_chunk(read_chunk(store, keys, tenants)).frame())
    blind_rules = set(reference.filter(pl.col("seq") % 3 == 0)["rule"])
    assert blind_rules & {K.RULE_IDLE_PROCESS_HOLDERS, K.RULE_HOLDERS_UNKNOWN}
    assert not blind_rules & {K.RULE_UNALLOCATED, K.RULE_IDLE_SHARE}  # nobody taken for nobody


def test_pods_missing_from_the_tenant_table_are_coded_per_chunk_and_unattributed() -> None:
    store = store_of(message(CASES["time_sliced"] + CASES["slurm"], seq=0))
    keys = store.query("SELECT agent_id, boot_id, seq FROM messages")
    partial = pl.DataFrame({"pod_uid": ["uid-0"], "tenant": ["vision"]}).lazy()  # uid-1 and Slurm jobs unknown
    fast = attribute_chunk(read_chunk(store, keys, partial)).frame()
    assert_same_ledger(reference_chunk(store, keys, partial), fast)
    assert {"vision", K.UNATTRIBUTED_TENANT} <= set(fast["tenant"].cast(pl.String))


@pytest.mark.parametrize("holders_read", [True, False])
def test_duplicate_device_rows_go_through_the_reference(holders_read: bool) -> None:
    m = message(CASES["time_sliced"])
    frames = _frames(store_of(m if holders_read else blind(m)))
    frames = frames._replace(devices=pl.concat([frames.devices, frames.devices]))
    ref = attribute(*(f.lazy() for f in frames)).collect()
    result = attribute_chunk(chunk_from_frames(*frames))
    assert result.fallback
    assert_same_ledger(ref, result.frame())
    assert (K.RULE_IDLE_PROCESS_HOLDERS in set(ref["rule"])) is not holders_read


def test_a_gpu_lost_before_its_identity_was_read_books_under_an_unknown_uuid() -> None:
    m = message([{"util": 0.5, "holders": [("a", 1.0, -1)], "procs": [("a", 1.0)]},
                 {"util": math.nan, "holders": [("b", 0.5, -1)]}])
    m.devices["uuid"][1] = wire.NULL_STR
    m.devices["model"][1] = wire.NULL_STR
    store = store_of(m)
    _both_ways(store)
    run_attribution(store)
    assert "unknown:node-0:1" in set(store.query("SELECT gpu_uuid FROM ledger")["gpu_uuid"])




@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.tuples(st.lists(gpu, min_size=1, max_size=4), st.sampled_from(["read", "unknown",
                                                                                         "unknown_but_listed"])),
                         min_size=1, max_size=3),
       dt_s=st.sampled_from([1.0, 10.0, 60.0]), shuffle=st.one_of(st.none(), st.integers(0, 3)))
def test_store_shaped_inputs_match_the_reference(messages: list[tuple[list[dict], str]], dt_s: float,
                                                 shuffle: int | None) -> None:
    built = []
    for seq, (gpus, holders) in enumerate(messages):
        m = message(gpus, seq=seq, dt_s=dt_s)
        if holders != "read":
            m = blind(m, drop_allocations=holders == "unknown")
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
    devices, processes, allocations, tenants, _ = _frames(store)
    frame = attribute_chunk(chunk_from_frames(devices, processes, allocations, tenants)).frame()
    for c in ("agent_id", "node", "gpu_uuid", "model", "kind", "tenant", "rule", "sharing"):
        assert isinstance(frame.schema[c], pl.Enum), c
    assert np.isclose(frame["gpu_seconds"].sum(), 10.0)


def test_every_compiled_pass_has_one_signature_whatever_the_input_path() -> None:
    """Store-shaped frames in and out of order and the job's DuckDB read path give the compiled passes the same
    argument types: one compilation (cached on disk) serves every chunk instead of one per dtype mix."""
    store = store_of(message(CASES["time_sliced"] + CASES["mig"] + CASES["slurm"], seq=0),
                     blind(message(CASES["unsampled_remainder"] + CASES["unmeasured"], seq=1)))
    frames = _frames(store)
    assert frames.allocations_unavailable.height == 1
    keys = store.query("SELECT agent_id, boot_id, seq FROM messages ORDER BY ALL")
    shuffled = [f.sample(fraction=1.0, shuffle=True, seed=3) for f in frames[:3]]
    chunks = [chunk_from_frames(*frames), chunk_from_frames(*shuffled, *frames[3:]),
              read_chunk(store, keys, frames.tenants.lazy())]
    for chunk in chunks:
        rows = attribute_chunk(chunk).rows
        assert rows.height > 0 and P.R_PROCESS_HOLDERS in rows["rule"].to_list()
    passes = [P.unit_key, P.holders, P.evidence, P.unit_rules, P.busy_by_process, P.by_share, P.unknown_holders,
              P.per_unit]
    assert {p.py_func.__name__: len(p.signatures) for p in passes} == {p.py_func.__name__: 1 for p in passes}


def test_the_kernels_codes_name_the_rules_of_the_reference_and_of_gpuledger_split() -> None:
    """The compiled passes write codes as literals (the Numba cache sees only passes.py): they must index
    columns.RULES / KINDS as the reference names them, and the busy rules must be gpuledger.split's."""
    named = {P.R_SAMPLES: K.RULE_PROCESS_SAMPLES, P.R_REMAINDER: K.RULE_UNPLACED_REMAINDER,
             P.R_EQUAL: K.RULE_EQUAL_PROCESSES, P.R_ALLOC: K.RULE_ALLOCATION_SHARE, P.R_SERVER: K.RULE_SERVER_ONLY,
             P.R_NOBODY: K.RULE_NO_HOLDER, P.R_IDLE: K.RULE_IDLE_SHARE, P.R_MIG: K.RULE_MIG_UNMEASURED,
             P.R_UNALLOC: K.RULE_UNALLOCATED, P.R_HOLDERS_UNKNOWN: K.RULE_HOLDERS_UNKNOWN,
             P.R_PROCESS_HOLDERS: K.RULE_IDLE_PROCESS_HOLDERS}
    assert [RULES[code] for code in named] == list(named.values()) and len(RULES) == len(named)
    assert [KINDS[c] for c in (P.BUSY, P.IDLE, P.UNMEASURED, P.UNALLOCATED)] == [
        K.BUSY, K.ALLOCATED_IDLE, K.UNMEASURED, K.UNALLOCATED]
    assert (split.PROCESS_SAMPLES, split.UNPLACED_REMAINDER, split.EQUAL_PROCESSES, split.ALLOCATION_SHARE,
            split.SERVER_ONLY, split.NO_HOLDER) == (P.R_SAMPLES, P.R_REMAINDER, P.R_EQUAL, P.R_ALLOC, P.R_SERVER,
                                                    P.R_NOBODY)
