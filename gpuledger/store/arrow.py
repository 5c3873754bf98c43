"""Decoded wire messages -> one Arrow table per stored table (``Store.write_messages``, the lake).

No per-row Python: per message, then numpy. Every table carries ``_m``, the
message's ordinal in the batch (not stored), so a writer can drop the rows of
messages it already has (see ``Store.write_arrow``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  # pa.compute.if_else

from gpuledger import wire

__all__ = ["batch_to_arrow"]


def batch_to_arrow(messages: Sequence[wire.Message], sources: Sequence[str | None]) -> dict[str, pa.Table]:
    """Flatten decoded messages into one Arrow table per stored table."""
    out: dict[str, pa.Table] = {
        "messages": pa.table(
            {
                "agent_id": [m.agent_id for m in messages],
                "boot_id": [m.boot_id for m in messages],
                "seq": pa.array([m.seq for m in messages], pa.uint64()),
                "node": [m.node for m in messages],
                "interval_start_ns": pa.array([m.interval_start_ns for m in messages], pa.int64()),
                "interval_end_ns": pa.array([m.interval_end_ns for m in messages], pa.int64()),
                "schema_version": pa.array([m.schema_version for m in messages], pa.uint16()),
                "driver_version": [m.driver_version for m in messages],
                "source": list(sources),
                "allocations_unavailable": pa.array(
                    [wire.header_note(m.extra.get("allocations_unavailable")) for m in messages], pa.string()),
                "cluster": pa.array([m.cluster for m in messages], pa.string()),  # null: the header named none
                "_m": pa.array(range(len(messages)), pa.int32()),  # ordinal in the batch (not stored)
            }
        )
    }
    for name in wire.RECORD_TABLES:
        out[name] = _row_table(messages, name)
    out["pods"] = _pods_table(messages)
    return out


def _row_table(messages: Sequence[wire.Message], name: str) -> pa.Table:
    arrays = [getattr(m, name) for m in messages]
    counts = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    rows = np.concatenate(arrays) if arrays else wire.empty(name)
    cols: dict[str, pa.Array] = {
        "_m": pa.array(np.repeat(np.arange(len(messages), dtype=np.int32), counts)),
        "agent_id": _repeat([m.agent_id for m in messages], counts),
        "boot_id": _repeat([m.boot_id for m in messages], counts),
        "seq": pa.array(np.repeat([m.seq for m in messages], counts).astype(np.uint64)),
        "node": _repeat([m.node for m in messages], counts),
        "interval_start_ns": pa.array(np.repeat([m.interval_start_ns for m in messages], counts).astype(np.int64)),
        "interval_end_ns": pa.array(np.repeat([m.interval_end_ns for m in messages], counts).astype(np.int64)),
    }
    # Global string table: offsets shift each message's indices into one list.
    strings: list[str] = []
    str_offset = np.zeros(len(messages), dtype=np.int64)
    for j, m in enumerate(messages):
        str_offset[j] = len(strings)
        strings.extend(m.strings)
    str_off = np.repeat(str_offset, counts)
    pods_flat: list[dict[str, Any]] = []
    pod_offset = np.zeros(len(messages), dtype=np.int64)
    for j, m in enumerate(messages):
        pod_offset[j] = len(pods_flat)
        pods_flat.extend(m.pods)
    pod_off = np.repeat(pod_offset, counts)
    string_values = pa.array(strings, pa.string())
    for col in rows.dtype.names or ():
        values = rows[col]
        if col == "pod":
            idx = values.astype(np.int64)
            valid = idx >= 0
            gidx = np.where(valid, idx + pod_off, 0)
            for key, out_col in (("uid", "pod_uid"), ("namespace", "namespace"), ("name", "pod")):
                table = pa.array([p[key] for p in pods_flat] or [""], pa.string())
                cols[out_col] = _take(table, gidx, valid)
        elif col in wire.STRING_COLUMNS.get(name, ()):
            idx = values.astype(np.int64)
            valid = idx != wire.NULL_STR
            gidx = np.where(valid, idx + str_off, 0)
            cols[col] = _take(string_values if strings else pa.array([""]), gidx, valid)
        elif values.dtype.kind == "f":
            cols[col] = pa.array(values, from_pandas=True)  # NaN -> NULL: missing, not zero
        else:
            cols[col] = pa.array(values)
    return pa.table(cols)


def _take(values: pa.Array, idx: np.ndarray, valid: np.ndarray) -> pa.Array:
    taken = values.take(pa.array(idx))
    if valid.all():
        return taken
    return pa.compute.if_else(pa.array(valid), taken, pa.scalar(None, taken.type))


def _repeat(values: list[str], counts: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(np.repeat(np.arange(len(values)), counts)))


def _pods_table(messages: Sequence[wire.Message]) -> pa.Table:
    latest: dict[str, tuple[str, str, str, int, str | None]] = {}
    for m in messages:
        for p in m.pods:
            seen = latest.get(p["uid"])
            if seen is None or seen[3] <= m.interval_end_ns:
                labels = json.dumps(p.get("labels", {}), sort_keys=True)
                latest[p["uid"]] = (p["namespace"], p["name"], labels, m.interval_end_ns, m.cluster)
    return pa.table(
        {
            "pod_uid": list(latest),
            "namespace": [v[0] for v in latest.values()],
            "name": [v[1] for v in latest.values()],
            "labels": [v[2] for v in latest.values()],
            "last_seen_ns": pa.array([v[3] for v in latest.values()], pa.int64()),
            "cluster": pa.array([v[4] for v in latest.values()], pa.string()),
        }
    )
