"""Attribution shards computed on a local Ray (two CPUs, no dashboard, auth disabled) book the same bytes as
one process and as a local process pool."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import ray
from polars.testing import assert_frame_equal

from gpuledger.analytics.shard_ray import RayExecutor
from gpuledger.analytics.shards import InProcess, ProcessPool, run_shards
from gpuledger.store import Store
from tests.support.shards import GROUPS, copy_raw, fleet, ledger, rollups

pytestmark = pytest.mark.slow  # starting Ray takes seconds


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a test cluster on loopback; a real one keeps Ray's token auth
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before


@pytest.fixture(scope="module")
def source() -> Store:
    return fleet()


def test_one_process_a_pool_and_ray_book_byte_identical_rollups(local_ray: None, source: Store, tmp_path) -> None:
    booked: dict[str, Store] = {}
    for name, executor in (("one", InProcess()), ("pool", ProcessPool(2)), ("ray", RayExecutor(in_flight=3))):
        store = copy_raw(source, str(tmp_path / f"{name}.duckdb"))
        result = run_shards(store, groups=GROUPS, executor=executor)
        assert len(result.shards) >= 6 and result.messages == source.count("messages")
        booked[name] = store
    assert source.query("SELECT count(DISTINCT sharing) FROM ledger").item() >= 5  # time-slicing, MIG, MPS...
    for name in ("pool", "ray"):
        assert_frame_equal(rollups(booked[name]), rollups(booked["one"]), check_exact=True)
        assert_frame_equal(ledger(booked[name]), ledger(booked["one"]), check_exact=True)
    assert ray.is_initialized()  # the executor used this process's Ray and left it running


def test_a_failing_shard_on_ray_books_nothing_and_names_its_messages(local_ray: None, tmp_path) -> None:
    from gpuledger.analytics.job import ChunkError

    store = copy_raw(fleet(), str(tmp_path / "bad.duckdb"))
    store.execute("UPDATE devices SET interval_end_ns = interval_start_ns - 1 WHERE node = 'gpu-node-2'")
    with pytest.raises(ChunkError, match="cannot be booked"):  # Ray's task error is also the kernel's error
        run_shards(store, groups=1, executor=RayExecutor())  # one group: the first hour's shard fails
    assert store.count("ledger_hourly") == store.count("attributed") == store.count("ledger") == 0


def test_ray_tasks_read_their_shards_from_the_lake_and_book_the_embedded_rollups(local_ray: None, source: Store,
                                                                                 tmp_path) -> None:
    pytest.importorskip("pyiceberg", reason="the lake extra is not installed")
    import polars as pl

    from gpuledger.analytics.hourly import HOURLY_COLUMNS
    from gpuledger.analytics.shard_lake import run_lake_shards
    from gpuledger.store.lake import LakeConfig, LakeStore, scan
    from tests.support.shards import lake_batch

    config = LakeConfig(f"sqlite:///{tmp_path}/catalog.db", str(tmp_path / "warehouse"))
    lake = LakeStore(config)
    lake.write_arrow(lake_batch(source))
    result = run_lake_shards(config, groups=GROUPS, executor=RayExecutor(in_flight=3))  # tasks get the config
    assert len(result.shards) >= 6 and result.messages == source.count("messages")
    got = pl.from_arrow(scan(lake, "ledger_hourly"))
    assert isinstance(got, pl.DataFrame)
    assert_frame_equal(got.select(HOURLY_COLUMNS).sort(HOURLY_COLUMNS, nulls_last=True),
                       rollups(source).sort(HOURLY_COLUMNS, nulls_last=True), check_dtypes=False, check_exact=True)
