"""Decode a whole poll of wire messages at once, straight into Arrow tables.

The per-message decoder (:func:`gpuledger.wire.decode`) validates and builds
one :class:`~gpuledger.wire.Message` per record: ~15 small numpy calls each,
fine for tests, too slow for a fleet. Here the per-message Python is only
what cannot be batched — the 28-byte frame and the JSON header — and
everything else is done once per batch:

- the four record tables: the table bytes of every message are joined and
  read with one ``numpy.frombuffer`` per table;
- string-table and pod references: checked and remapped to one global
  string/pod list with ``numpy.repeat`` offsets (vectorised);
- value checks (fractions, shares) on the concatenated columns.

Validation is *optimistic*: when a batch-level check fails (a bad reference,
a wrongly typed string or pod), the strict per-message decoder runs on each
message of the batch to name the offenders; they become dead letters with the
same reasons :func:`gpuledger.wire.decode` gives, and the rest is decoded
again. Poison costs time only in the batch that carries it.

The result is :class:`ArrowBatch`: one Arrow table per stored table, the
layout :mod:`gpuledger.store` inserts in bulk (``Store.write_arrow``).
"""

from __future__ import annotations

import gc
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from gpuledger import wire
from gpuledger.errors import WireError

__all__ = ["ArrowBatch", "HeaderCache", "decode_batch"]

_JSON = msgspec.json.Decoder()
_FRAME = struct.Struct("<4sHHIIIII")
_ITEMSIZE = [dt.itemsize for dt in wire.TABLES.values()]
_NAMES = list(wire.TABLES)
_STRING_COLUMNS = {
    "devices": ("uuid", "model", "profile"),
    "processes": ("container", "slurm_job"),
    "allocations": ("container", "resource"),
    "field_errors": ("field", "reason"),
}
_POD_TABLES = ("processes", "allocations")


@dataclass
class ArrowBatch:
    """A decoded batch: Arrow tables by stored-table name, and what failed.

    ``tables["messages"]`` has one row per decoded message, in input order,
    with its input position in ``index``; ``failed`` maps input positions to
    the reason the message was refused.
    """

    tables: dict[str, pa.Table]
    index: list[int]
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def n_messages(self) -> int:
        return len(self.index)

    def rows(self, *names: str) -> int:
        """Rows in the named tables (default: the four record tables)."""
        return sum(self.tables[n].num_rows for n in (names or _NAMES))


class _BatchCheckFailed(Exception):
    """A batch-level check failed: find the offenders message by message."""


def decode_batch(values: Sequence[bytes | None], sources: Sequence[str | None] | None = None,
                 seen: HeaderCache | None = None) -> ArrowBatch:
    """Decode ``values`` (raw record values; None is a tombstone) into Arrow tables.

    ``sources`` (e.g. ``topic/partition/offset``) is stored as
    ``messages.source``. Never raises for bad input: every refused value is
    in ``failed`` with its reason. ``seen`` (a :class:`HeaderCache` kept
    across batches) skips re-validating a string table and pod list equal to
    the ones the same agent sent last: a node's pods rarely change per tick.
    """
    seen = seen if seen is not None else HeaderCache()
    paused = gc.isenabled()
    if paused:  # the headers are thousands of acyclic dicts: cyclic GC passes over them cost ~half the time
        gc.disable()
    try:
        return _decode(values, sources, seen)
    finally:
        if paused:
            gc.enable()


def _decode(values: Sequence[bytes | None], sources: Sequence[str | None] | None, seen: HeaderCache) -> ArrowBatch:
    sources = list(sources) if sources is not None else [None] * len(values)
    failed: dict[int, str] = {}
    heads: list[tuple[int, dict[str, Any], tuple[int, ...], int, bytes]] = []
    for i, buf in enumerate(values):
        if buf is None:
            failed[i] = "record has no value (a tombstone)"
            continue
        parsed = _light(buf, seen)
        if isinstance(parsed, str):
            failed[i] = parsed
        else:
            heads.append((i, *parsed, buf))
    try:
        tables = _build(heads, sources)
    except _BatchCheckFailed:
        good = []
        for item in heads:
            try:
                wire.decode(item[4])
                _build([item], sources)  # what decode accepts, Arrow must hold too
                good.append(item)
            except WireError as exc:
                failed[item[0]] = str(exc)
            except _BatchCheckFailed as exc:
                failed[item[0]] = f"decoded but not storable: {exc}"
        heads = good
        tables = _build(heads, sources)
    return ArrowBatch(tables=tables, index=[h[0] for h in heads], failed=failed)


class HeaderCache:
    """Per agent, the last string table and pod list that passed validation."""

    def __init__(self, max_agents: int = 100_000) -> None:
        self.max_agents = max_agents
        self._last: dict[Any, tuple[list[Any], list[Any]]] = {}

    def check(self, header: Any) -> None:
        """``wire._check_header``, skipping the per-element checks when unchanged."""
        if type(header) is dict:
            agent, strings, pods = header.get("agent_id"), header.get("strings"), header.get("pods")
            last = self._last.get(agent) if type(agent) is str else None
            if last is not None and last[0] == strings and last[1] == pods and _scalars_ok(header):
                return
        wire._check_header(header)  # noqa: SLF001  # the one definition of a valid header
        if len(self._last) >= self.max_agents:
            self._last.clear()
        self._last[header["agent_id"]] = (header["strings"], header["pods"])




def _scalars_ok(h: dict[str, Any]) -> bool:
    """The scalar half of ``wire._check_header`` (the cache covers strings and pods)."""
    for k in ("agent_id", "boot_id", "node"):
        v = h.get(k)
        if type(v) is not str or not v:
            return False
    for k in ("seq", "interval_start_ns", "interval_end_ns"):
        v = h.get(k)
        if type(v) is not int or not 0 <= v < 2**63:
            return False
    dv = h.get("driver_version")
    return h["interval_end_ns"] > h["interval_start_ns"] and (dv is None or type(dv) is str)


def _light(buf: bytes, seen: HeaderCache) -> tuple[dict[str, Any], tuple[int, ...], int] | str:
    """Frame and header checks for one message: (header, counts, table offset) or a reason."""
    try:
        if len(buf) > wire.MAX_MESSAGE_BYTES or len(buf) < _FRAME.size or buf[:4] != wire.MAGIC:
            raise WireError("frame")
        magic, version, _flags, head_len, *counts = _FRAME.unpack_from(buf, 0)
        if version not in wire.SUPPORTED_VERSIONS:
            raise WireError("version")
        offset = _FRAME.size + head_len
        if offset + sum(n * s for n, s in zip(counts, _ITEMSIZE)) != len(buf):
            raise WireError("length")
        head = buf[_FRAME.size:offset]
        try:
            header = _JSON.decode(head)  # ~4x faster than json.loads on a node's header
        except msgspec.DecodeError:
            header = json.loads(head)  # what it refuses (NaN, huge ints), the standard parser judges
        if b"\\ud" in head.lower():  # \u escapes of UTF-16 surrogates: rare, check properly
            wire._check_unicode(header)  # noqa: SLF001
        seen.check(header)
        return header, tuple(counts), offset
    except Exception:  # noqa: BLE001  # the strict decoder names the reason
        try:
            wire.decode(buf)
        except WireError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001  # a decoder bug must not stop the partition
            return f"decoder failed unexpectedly: {type(exc).__name__}: {exc}"
        return "refused by the batch decoder although the strict decoder accepts it (please report)"


def _build(heads: Sequence[tuple[int, dict[str, Any], tuple[int, ...], int, bytes]],
           sources: Sequence[str | None]) -> dict[str, pa.Table]:
    n = len(heads)
    hdr = [h[1] for h in heads]
    counts = np.array([h[2] for h in heads], dtype=np.int64).reshape(n, len(_NAMES))
    n_strings = np.fromiter((len(h["strings"]) for h in hdr), np.int64, n)
    n_pods = np.fromiter((len(h["pods"]) for h in hdr), np.int64, n)
    ends = np.fromiter((h["interval_end_ns"] for h in hdr), np.int64, n)
    # One global string list and pod list for the batch. A node sends the same
    # string table and pods tick after tick: a list equal to the one its agent
    # sent before in this batch is stored once and shared (same base offset).
    str_base = np.zeros(n, np.int64)
    pod_base = np.zeros(n, np.int64)
    flat_strings: list[Any] = []
    pod_lists: list[list[Any]] = []  # distinct pod lists, with the latest end each was seen at
    pod_ends: list[int] = []
    n_flat_pods = 0
    last: dict[Any, tuple[list[Any], int, list[Any], int]] = {}
    pod_lists_index: dict[int, int] = {}  # base offset -> index into pod_lists
    for j, h in enumerate(hdr):
        strings_j, pods_j = h["strings"], h["pods"]
        prev = last.get(h["agent_id"])
        if prev is not None and prev[0] == strings_j:
            str_base[j] = prev[1]
        else:
            str_base[j] = len(flat_strings)
            flat_strings.extend(strings_j)
        if prev is not None and prev[2] == pods_j:
            pod_base[j] = prev[3]
            k = pod_lists_index[prev[3]]
            pod_ends[k] = max(pod_ends[k], int(ends[j]))
        else:
            pod_base[j] = n_flat_pods
            pod_lists_index[n_flat_pods] = len(pod_lists)
            pod_lists.append(pods_j)
            pod_ends.append(int(ends[j]))
            n_flat_pods += len(pods_j)
        last[h["agent_id"]] = (strings_j, int(str_base[j]), pods_j, int(pod_base[j]))
    try:
        strings = pa.array(flat_strings or [""], pa.string())
        pods = [p for lst in pod_lists for p in lst]
        pod_cols = {k: pa.array([p[k] for p in pods] or [""], pa.string()) for k in ("uid", "namespace", "name")}
    except (pa.ArrowException, UnicodeError, KeyError, TypeError) as exc:
        raise _BatchCheckFailed(f"{type(exc).__name__}: {exc}") from None

    key = {
        "agent_id": pa.array([h["agent_id"] for h in hdr], pa.string()),
        "boot_id": pa.array([h["boot_id"] for h in hdr], pa.string()),
        "seq": pa.array(np.fromiter((h["seq"] for h in hdr), np.uint64, n)),
        "node": pa.array([h["node"] for h in hdr], pa.string()),
        "interval_start_ns": pa.array(np.fromiter((h["interval_start_ns"] for h in hdr), np.int64, n)),
        "interval_end_ns": pa.array(ends),
    }
    out: dict[str, pa.Table] = {
        "messages": pa.table({
            **key,
            "schema_version": pa.array(np.full(n, wire.SCHEMA_VERSION, np.uint16)),
            "driver_version": pa.array([h.get("driver_version") for h in hdr], pa.string()),
            "source": pa.array([sources[h[0]] for h in heads], pa.string()),
            "_m": pa.array(np.arange(n, dtype=np.int32)),
        })
    }
    for t, (name, dt) in enumerate(wire.TABLES.items()):
        per_msg = counts[:, t]
        parts = []
        for h in heads:
            start = h[3] + sum(h[2][k] * _ITEMSIZE[k] for k in range(t))
            parts.append(memoryview(h[4])[start:start + h[2][t] * dt.itemsize])
        rows = np.frombuffer(b"".join(parts), dtype=dt)
        owner = np.repeat(np.arange(n), per_msg)
        owner32 = owner.astype(np.int32)
        cols: dict[str, pa.Array] = {
            k: (pa.DictionaryArray.from_arrays(pa.array(owner32), v) if v.type == pa.string()  # no copy per row
                else pa.array(v.to_numpy()[owner]))
            for k, v in key.items()
        }
        cols["_m"] = pa.array(owner.astype(np.int32))
        _check_values(name, rows, n_strings[owner], n_pods[owner])
        for col in dt.names or ():
            values = rows[col]
            if col in _STRING_COLUMNS[name]:
                idx = values.astype(np.int64)
                valid = idx != wire.NULL_STR
                cols[col] = _take(strings, np.where(valid, idx + str_base[owner], 0), valid)
            elif col == "pod":
                idx = values.astype(np.int64)
                valid = idx >= 0
                gidx = np.where(valid, idx + pod_base[owner], 0)
                for k, out_col in (("uid", "pod_uid"), ("namespace", "namespace"), ("name", "pod")):
                    cols[out_col] = _take(pod_cols[k], gidx, valid)
            elif values.dtype.kind == "f":
                cols[col] = pa.array(values, from_pandas=True)  # NaN -> NULL: missing, not zero
            else:
                cols[col] = pa.array(values)
        out[name] = pa.table(cols)
    out["pods"] = _pods_table(pod_lists, pod_ends)
    return out


def _check_values(name: str, rows: np.ndarray, n_strings: np.ndarray, n_pods: np.ndarray) -> None:
    """The reference and range checks of ``wire._check_references``, on a whole batch."""
    if not rows.size:
        return
    for col in _STRING_COLUMNS[name]:
        c = rows[col]
        if ((c != wire.NULL_STR) & (c >= n_strings)).any():
            raise _BatchCheckFailed(f"{name}.{col}")
    if name == "field_errors" and ((rows["field"] == wire.NULL_STR) | (rows["reason"] == wire.NULL_STR)).any():
        raise _BatchCheckFailed("field_errors null")
    if name in _POD_TABLES and ((rows["pod"] < wire.NULL_POD) | (rows["pod"] >= n_pods)).any():
        raise _BatchCheckFailed(f"{name}.pod")
    if name == "devices":
        sf, util = rows["slice_fraction"], rows["gpu_util"]
        if (~np.isfinite(sf) | (sf <= 0) | (sf > 1) | (util < 0) | (util > 1)).any():
            raise _BatchCheckFailed("devices values")
    if name == "allocations":
        share = rows["share"]
        if (~np.isfinite(share) | (share < 0) | (share > 1)).any():
            raise _BatchCheckFailed("allocations.share")


def _take(values: pa.Array, idx: np.ndarray, valid: np.ndarray) -> pa.Array:
    """``values[idx]``, null where not ``valid``, as a dictionary array (no string copied per row)."""
    indices = pa.array(idx.astype(np.int32), mask=None if valid.all() else ~valid)
    return pa.DictionaryArray.from_arrays(indices, values)


def _pods_table(pod_lists: Sequence[list[Any]], ends: Sequence[int]) -> pa.Table:
    """Each pod once, as last seen in the batch (labels as sorted-key JSON)."""
    latest: dict[str, tuple[dict[str, Any], int]] = {}
    for pods, end in zip(pod_lists, ends):
        for p in pods:
            seen = latest.get(p["uid"])
            if seen is None or seen[1] <= end:
                latest[p["uid"]] = (p, end)
    vals = list(latest.values())
    return pa.table({
        "pod_uid": pa.array(list(latest), pa.string()),
        "namespace": pa.array([p["namespace"] for p, _ in vals], pa.string()),
        "name": pa.array([p["name"] for p, _ in vals], pa.string()),
        "labels": pa.array([json.dumps(p.get("labels", {}), sort_keys=True) for p, _ in vals], pa.string()),
        "last_seen_ns": pa.array([e for _, e in vals], pa.int64()),
    })
