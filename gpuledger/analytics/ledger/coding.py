"""The chunk coding: a chunk of messages as integer codes (the kernel's input) and back.

A :class:`Chunk` carries integer codes instead of strings: message ordinal
``m`` (row of ``messages``), ``owner`` (row of ``owners``: pod uid, namespace,
pod, tenant; the row whose ``pod_uid`` is null stands for "no pod") and
``ident`` (row of ``idents``: node, GPU index, uuid, model, profile). The job
reads chunks in this form straight from DuckDB (``job.read_chunk``);
:func:`chunk_from_frames` codes store-shaped frames (tests, benchmarks) and
:func:`frames_of_chunk` turns a chunk back into the frames ``attribute``
reads (the kernel's fallback, tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import polars as pl

from gpuledger.analytics import kinds as K
from gpuledger.analytics.ledger.columns import MSG

__all__ = ["Chunk", "Frames", "chunk_from_frames", "device_idents", "frames_of_chunk"]


@dataclass(frozen=True)
class Chunk:
    """One chunk of messages, integer-coded.

    - ``messages``: row ``m`` = (agent_id, boot_id, seq, holders_unknown); ``holders_unknown``:
      the agent could not read the allocations (``messages.allocations_unavailable`` is set)
    - ``idents``: row = (node, gpu_index, uuid, model, profile) of a device row
    - ``devices``: m, ident, gpu_index, mig_index, interval_start_ns, interval_end_ns,
      slice_fraction, gpu_util, gr_engine_active, util_samples, energy_delta_mj
    - ``processes``: m, gpu_index, mig_index, owner, samples, sm_util_sum, used_memory_bytes
    - ``allocations``: m, gpu_index, mig_index, owner, replica, shared (resource names a
      shared GPU), share
    - ``owners``: row = (pod_uid, namespace, pod, tenant); ``pod_uid`` null = no pod
    """

    messages: pl.DataFrame
    idents: pl.DataFrame
    devices: pl.DataFrame
    processes: pl.DataFrame
    allocations: pl.DataFrame
    owners: pl.DataFrame


class Frames(NamedTuple):
    """Store-shaped frames, the arguments of ``reference.attribute`` in its order."""

    devices: pl.DataFrame
    processes: pl.DataFrame
    allocations: pl.DataFrame
    tenants: pl.DataFrame  # pod_uid, tenant
    allocations_unavailable: pl.DataFrame  # MSG keys of the messages whose holders are unknown


def _runs(frame: pl.DataFrame, cols: list[str]) -> np.ndarray:
    """First row of each run of equal ``cols`` (rows arrive grouped by message)."""
    if frame.height == 0:
        return np.zeros(0, np.int64)
    change = frame.select(pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in cols]))
    starts = change.to_series().to_numpy()
    starts[0] = True
    return np.flatnonzero(starts)


def chunk_from_frames(devices: pl.DataFrame, processes: pl.DataFrame, allocations: pl.DataFrame,
                      tenants: pl.DataFrame, allocations_unavailable: pl.DataFrame | None = None) -> Chunk:
    """Store-shaped frames (the columns ``attribute`` reads) + tenants(pod_uid, tenant) -> a Chunk.

    ``allocations_unavailable``: MSG keys of the messages whose agent could
    not read the allocations. Message keys are coded per run of equal keys,
    not per row; owners take namespace and pod from the first row naming the
    pod uid (processes first), as ``attribute`` does.
    """
    frames = (devices, processes, allocations)
    starts = [_runs(f, MSG) for f in frames]
    firsts = [f[s].select(MSG) for f, s in zip(frames, starts)]
    messages = pl.concat(firsts).unique(maintain_order=True)
    lookup = messages.with_row_index("m")
    ms = []
    for f, s, first in zip(frames, starts, firsts):
        m_run = first.join(lookup, on=MSG, how="left", maintain_order="left")["m"].to_numpy().astype(np.int64)
        ms.append(np.repeat(m_run, np.diff(np.r_[s, f.height]).astype(np.int64)))
    flagged = pl.lit(False)
    if allocations_unavailable is not None:
        messages = messages.join(allocations_unavailable.select(MSG).unique().with_columns(_flag=pl.lit(True)),
                                 on=MSG, how="left", maintain_order="left")
        flagged = pl.col("_flag").fill_null(False)
    messages = messages.select(*MSG, holders_unknown=flagged)
    who = ["pod_uid", "namespace", "pod"]
    owners = (
        pl.concat([processes.select(who), allocations.select(who)])
        .unique(subset="pod_uid", keep="first", maintain_order=True)
        .join(tenants.select("pod_uid", "tenant").unique(subset="pod_uid", keep="first"), on="pod_uid",
              how="left", maintain_order="left")
        .with_columns(tenant=pl.col("tenant").fill_null(K.UNATTRIBUTED_TENANT))
    )
    uids = owners["pod_uid"]
    enum = pl.Enum(uids.drop_nulls().to_list())
    null_owner = int(uids.is_null().arg_max() or 0) if uids.null_count() else -1

    def owner(f: pl.DataFrame) -> pl.Series:
        # Codes of the non-null uids are their rank among them; shift past the null row's slot.
        c = f["pod_uid"].cast(enum).to_physical().cast(pl.Int64)
        if null_owner >= 0:
            c = pl.select(pl.when(c >= null_owner).then(c + 1).otherwise(c)).to_series()
        return c.fill_null(null_owner)

    dev, idents = device_idents(devices.select(
        *_IDENT, "mig_index", "interval_start_ns", "interval_end_ns", "slice_fraction", "gpu_util",
        "gr_engine_active", "util_samples", "energy_delta_mj").with_columns(m=pl.Series(ms[0])))
    return Chunk(
        messages=messages,
        idents=idents,
        devices=dev,
        processes=processes.select("gpu_index", "mig_index", "samples", "sm_util_sum", "used_memory_bytes")
        .with_columns(m=pl.Series(ms[1]), owner=owner(processes)),
        allocations=allocations.select("gpu_index", "mig_index", "replica", "share")
        .with_columns(m=pl.Series(ms[2]), owner=owner(allocations),
                      shared=allocations["resource"].str.contains("shared", literal=True).fill_null(False)),
        owners=owners.select(*who, "tenant"),
    )


_IDENT = ["node", "gpu_index", "uuid", "model", "profile"]


def device_idents(devices: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Device rows with strings -> (rows with ``ident`` instead of node/uuid/model/profile, idents)."""
    idents = devices.select(_IDENT).unique(maintain_order=True)
    ident = devices.select(_IDENT).join(idents.with_row_index("ident"), on=_IDENT, how="left", nulls_equal=True,
                                        maintain_order="left")["ident"]
    return devices.drop("node", "uuid", "model", "profile").with_columns(ident=ident), idents


def frames_of_chunk(chunk: Chunk) -> Frames:
    """A Chunk back to the store-shaped frames ``attribute`` reads."""
    msgs = chunk.messages.select(MSG).with_row_index("m")
    own = chunk.owners.with_row_index("owner")
    ids = chunk.idents.drop("gpu_index").with_row_index("ident")

    def keyed(f: pl.DataFrame) -> pl.DataFrame:
        out = f.with_columns(pl.col("m").cast(pl.UInt32)).join(msgs, on="m", how="left", maintain_order="left")
        return out.drop("m")

    devices = keyed(chunk.devices.with_columns(pl.col("ident").cast(pl.UInt32))).join(
        ids, on="ident", how="left", maintain_order="left").drop("ident")
    owned = [keyed(f.with_columns(pl.col("owner").cast(pl.UInt32))).join(own.drop("tenant"), on="owner", how="left",
                                                                        maintain_order="left").drop("owner")
             for f in (chunk.processes, chunk.allocations)]
    allocations = owned[1].with_columns(
        resource=pl.when(pl.col("shared")).then(pl.lit("nvidia.com/gpu.shared")).otherwise(pl.lit("nvidia.com/gpu")))
    tenants = chunk.owners.filter(pl.col("pod_uid").is_not_null()).select("pod_uid", "tenant")
    return Frames(devices, owned[0], allocations, tenants,
                  chunk.messages.filter("holders_unknown").select(MSG))
