"""Shared by the shard runner's tests: a simulated multi-node fleet with time-slicing, MPS and MIG, and copies
of its raw samples to attribute again."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from gpuledger import wire
from gpuledger.analytics.hourly import HOURLY_COLUMNS
from gpuledger.analytics.job import BOOKED_COLUMNS
from gpuledger.sim.accuracy import simulate
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.store import Store

HORIZON_S = 2 * 3600.0 + 600.0  # two hours and a bit: three hour shards per node
GROUPS = 3


def fleet() -> Store:
    """Four 8-GPU nodes of the demo fleet (exclusive, multi-GPU, time-sliced, fractional, MPS and MIG GPUs,
    mild driver quirks) at a 60 s tick, attributed by the message-chunk job."""
    return simulate(demo_fleet(4, 8, seed=4, horizon_s=HORIZON_S), tick_s=60.0, horizon_s=HORIZON_S)


def copy_raw(src: Store, path: str, where: str = "TRUE") -> Store:
    """A file with ``src``'s raw samples of the messages matching ``where`` (nothing attributed)."""
    dst = Store(path)
    keys = src.query(f"SELECT agent_id, boot_id, seq FROM messages WHERE {where}")
    add_raw(src, dst, keys)
    dst.append("pods", src.query("SELECT * FROM pods"))
    return dst


def add_raw(src: Store, dst: Store, keys: pl.DataFrame) -> None:
    """Copy these messages' raw rows from ``src`` into ``dst`` (what ingest writes for them)."""
    with src.registered(_k=keys):
        for table in (*wire.RECORD_TABLES, "messages"):
            dst.append(table, src.query(f"SELECT * FROM {table} SEMI JOIN _k USING (agent_id, boot_id, seq)"))


def rollups(store: Store) -> pl.DataFrame:
    return store.query(f"SELECT {', '.join(HOURLY_COLUMNS)} FROM ledger_hourly ORDER BY ALL")


def ledger(store: Store) -> pl.DataFrame:
    return store.query(f"SELECT {', '.join(BOOKED_COLUMNS)} FROM ledger ORDER BY ALL")


def lake_batch(src: Store, keys: pl.DataFrame | None = None) -> dict[str, pa.Table]:
    """``src``'s raw rows of these messages (default: all) as the lake writer takes a decoded batch
    (``LakeStore.write_arrow``: each row with its message's ordinal ``_m``), with every pod."""
    keys = src.query("SELECT agent_id, boot_id, seq FROM messages") if keys is None else keys
    out: dict[str, pa.Table] = {}
    with src.registered(_k=keys):
        src.execute("CREATE OR REPLACE TEMP TABLE _lake_m AS SELECT agent_id, boot_id, seq, "
                    "(row_number() OVER (ORDER BY agent_id, boot_id, seq) - 1)::INTEGER AS _m FROM messages "
                    "SEMI JOIN _k USING (agent_id, boot_id, seq)")
    for table in ("messages", *wire.RECORD_TABLES):
        out[table] = src.query(f"SELECT t.*, m._m FROM {table} t JOIN _lake_m m USING (agent_id, boot_id, seq) "
                               "ORDER BY m._m").to_arrow()
    src.execute("DROP TABLE _lake_m")
    out["pods"] = src.query("SELECT * FROM pods").to_arrow()
    return {name: _small_strings(t) for name, t in out.items()}


def _small_strings(table: pa.Table) -> pa.Table:
    """Polars' large strings as the decoder's strings (the writer joins batch keys on their type)."""
    schema = pa.schema([f.with_type(pa.string()) if f.type == pa.large_string() else f for f in table.schema])
    return table.cast(schema)
