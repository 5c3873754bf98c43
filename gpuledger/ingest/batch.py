"""Decode a whole poll of wire messages at once, straight into Arrow tables.

The per-message decoder (:func:`gpuledger.wire.decode`) validates and builds
one :class:`~gpuledger.wire.Message` per record: ~15 small numpy calls each,
fine for tests, too slow for a fleet. Here the per-message Python is only
what cannot be batched -- the 28-byte frame and the identity fields of the
JSON header -- and everything else is done once per batch or once per change:

- the header is decoded by msgspec into a typed struct whose type and range
  checks are those of ``wire._check_header``; the string table and the pod
  list (half of a node's message, and the same tick after tick) are only
  *scanned* as raw JSON and compared with what the same agent sent last
  (:class:`HeaderCache`): parsed, validated and turned into Arrow arrays and
  label JSON only when they changed;
- the four record tables: the table bytes of every message are joined and
  read with one ``numpy.frombuffer`` per table;
- string-table and pod references: checked and remapped to one global
  string/pod list with ``numpy.repeat`` offsets (vectorised);
- value checks (fractions, shares) on the concatenated columns.

Anything the typed decoder does not take (a duplicate key, ``NaN`` in an
unknown field, a ``\\ud800`` escape, non-UTF-8 bytes) goes the general way:
``json.loads`` and ``wire._check_header``, exactly as the strict decoder.

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
from typing import Annotated, NamedTuple

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuledger import wire
from gpuledger.errors import WireError

__all__ = ["ArrowBatch", "HeaderCache", "decode_batch"]

_FRAME = struct.Struct("<4sHHIIIII")
_S0, _S1, _S2, _S3 = (dt.itemsize for dt in wire.TABLES.values())  # record sizes, in wire.TABLES order
_ITEMSIZE = np.array([_S0, _S1, _S2, _S3], np.int64)
_NAMES = list(wire.RECORD_TABLES)
_POD_TABLES = ("processes", "allocations")

_Id = Annotated[str, msgspec.Meta(min_length=1)]  # a non-empty string
_U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # a non-negative 64-bit integer (bool and float refused)


class _Head(msgspec.Struct):
    """The header fields ingest stores, typed as ``wire._check_header`` requires them."""

    agent_id: _Id
    boot_id: _Id
    seq: _U63
    node: _Id
    interval_start_ns: _U63
    interval_end_ns: _U63
    strings: msgspec.Raw  # scanned, not parsed: compared with the agent's last one
    pods: msgspec.Raw
    driver_version: str | None = None
    allocations_unavailable: str | None = None  # the agent could not read who holds its GPUs, and why
    cluster: _Id | None = None  # optional (wire.Message.cluster): absent or null, the default cluster


class _Pod(msgspec.Struct):
    """``wire._pod_ok``: uid, namespace and name strings, labels a str -> str object (optional)."""

    uid: str
    namespace: str
    name: str
    labels: dict[str, str] = {}


_HEAD = msgspec.json.Decoder(_Head)
_STRINGS = msgspec.json.Decoder(list[str])
_PODS = msgspec.json.Decoder(list[_Pod])


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
    #: each message row's header part (string table and pods), for :meth:`pods_of`
    parts: Sequence[_Part] = ()

    def pods_of(self, rows: Sequence[int]) -> pa.Table:
        """The ``pods`` table as only the message rows ``rows`` say it (each pod as last seen among them).

        ``tables["pods"]`` covers every message of the batch; when some are set
        aside (quarantined), their pods and their ``last_seen`` must not reach
        the store.
        """
        ends = self.tables["messages"]["interval_end_ns"].to_numpy()
        clusters = self.tables["messages"]["cluster"].to_pylist()
        slot: dict[int, int] = {}
        distinct: list[_Part] = []
        latest: list[int] = []
        where: list[str | None] = []
        for r in rows:
            part, end = self.parts[r], int(ends[r])
            k = slot.get(id(part))
            if k is None:
                slot[id(part)] = len(distinct)
                distinct.append(part)
                latest.append(end)
                where.append(clusters[r])
            elif end >= latest[k]:
                latest[k], where[k] = end, clusters[r]
        return _pods_table(distinct, np.array(latest, np.int64), where)

    @property
    def n_messages(self) -> int:
        return len(self.index)

    def rows(self, *names: str) -> int:
        """Rows in the named tables (default: the four record tables)."""
        return sum(self.tables[n].num_rows for n in (names or _NAMES))


class _BatchCheckFailed(Exception):
    """A batch-level check failed: find the offenders message by message."""


class _Part:
    """A validated string table and pod list, as Arrow arrays (labels as sorted-key JSON)."""

    __slots__ = ("labels", "n_pods", "n_strings", "name", "namespace", "strings", "uid")

    def __init__(self, strings: list[str], pods: Sequence[tuple[str, str, str, dict[str, str]]]) -> None:
        self.n_strings, self.n_pods = len(strings), len(pods)
        self.strings = pa.array(strings, pa.string())
        self.uid = pa.array([p[0] for p in pods], pa.string())
        self.namespace = pa.array([p[1] for p in pods], pa.string())
        self.name = pa.array([p[2] for p in pods], pa.string())
        self.labels = pa.array([json.dumps(p[3], sort_keys=True) for p in pods], pa.string())


class HeaderCache:
    """Per agent, the raw string table and pod list it sent last, already validated and converted.

    A node's pods rarely change per tick: a header whose two raw lists are
    byte-equal to the agent's previous ones reuses their :class:`_Part`. At
    most ``max_agents`` agents are remembered (~12 KB each for a node of 32
    labelled pods: the raw lists and their Arrow arrays); when full the cache
    starts over.
    """

    def __init__(self, max_agents: int = 100_000) -> None:
        self.max_agents = max_agents
        self._last: dict[str, tuple[msgspec.Raw, msgspec.Raw, _Part]] = {}
        self.misses = 0  # parts built (first sight of an agent, or its lists changed)

    def part(self, agent_id: str, strings: msgspec.Raw, pods: msgspec.Raw) -> _Part:
        """The validated part for these raw lists; raises msgspec.ValidationError when invalid."""
        last = self._last.get(agent_id)
        if last is not None and last[0] == strings and last[1] == pods:
            return last[2]
        part = _Part(_STRINGS.decode(strings), [(p.uid, p.namespace, p.name, p.labels) for p in _PODS.decode(pods)])
        self.misses += 1
        if len(self._last) >= self.max_agents:
            self._last.clear()
        self._last[agent_id] = (strings, pods, part)
        return part


class _Item(NamedTuple):
    """One accepted message, header checked, tables not yet read."""

    pos: int  # position in the input
    agent_id: str
    boot_id: str
    seq: int
    node: str
    interval_start_ns: int
    interval_end_ns: int
    driver_version: str | None
    allocations_unavailable: str | None
    cluster: str | None
    part: _Part
    counts: tuple[int, ...]  # rows per table
    offset: int  # where the tables start in ``buf``
    buf: bytes


def decode_batch(values: Sequence[bytes | None], sources: Sequence[str | None] | None = None,
                 seen: HeaderCache | None = None) -> ArrowBatch:
    """Decode ``values`` (raw record values; None is a tombstone) into Arrow tables.

    ``sources`` (e.g. ``topic/partition/offset``) is stored as
    ``messages.source``. Never raises for bad input: every refused value is
    in ``failed`` with its reason. ``seen`` (a :class:`HeaderCache` kept
    across batches, as the Ingestor does) skips parsing and re-validating a
    string table and pod list equal to the ones the same agent sent last.
    """
    seen = seen if seen is not None else HeaderCache()
    paused = gc.isenabled()
    if paused:  # thousands of acyclic objects per batch: cyclic GC passes over them cost time for nothing
        gc.disable()
    try:
        return _decode(values, sources, seen)
    finally:
        if paused:
            gc.enable()


def _decode(values: Sequence[bytes | None], sources: Sequence[str | None] | None, seen: HeaderCache) -> ArrowBatch:
    sources = list(sources) if sources is not None else [None] * len(values)
    failed: dict[int, str] = {}
    heads: list[_Item] = []
    for i, buf in enumerate(values):
        if buf is None:
            failed[i] = "record has no value (a tombstone)"
            continue
        parsed = _light(i, buf, seen)
        if isinstance(parsed, str):
            failed[i] = parsed
        else:
            heads.append(parsed)
    try:
        tables = _build(heads, sources)
    except _BatchCheckFailed:
        good = []
        for item in heads:
            try:
                wire.decode(item.buf)
                _build([item], sources)  # what decode accepts, Arrow must hold too
                good.append(item)
            except WireError as exc:
                failed[item.pos] = str(exc)
            except _BatchCheckFailed as exc:
                failed[item.pos] = f"decoded but not storable: {exc}"
        heads = good
        tables = _build(heads, sources)
    return ArrowBatch(tables=tables, index=[h.pos for h in heads], failed=failed, parts=[h.part for h in heads])


def _light(i: int, buf: bytes, seen: HeaderCache) -> _Item | str:
    """Frame and header checks for one message: its item, or the reason it is refused."""
    try:
        if len(buf) > wire.MAX_MESSAGE_BYTES or len(buf) < _FRAME.size or buf[:4] != wire.MAGIC:
            raise WireError("frame")
        _magic, version, _flags, head_len, n0, n1, n2, n3 = _FRAME.unpack_from(buf, 0)
        if version not in wire.SUPPORTED_VERSIONS:
            raise WireError("version")
        offset = _FRAME.size + head_len
        if offset + n0 * _S0 + n1 * _S1 + n2 * _S2 + n3 * _S3 != len(buf):
            raise WireError("length")
        counts = (n0, n1, n2, n3)
        head = buf[_FRAME.size:offset]
        h = None
        # \u escapes of UTF-16 surrogates, non-UTF-8 bytes: rare, judged the general way
        if (b"\\" not in head or b"\\ud" not in head.lower()) and (head.isascii() or _is_utf8(head)):
            try:
                h = _HEAD.decode(head)
                part = seen.part(h.agent_id, h.strings, h.pods)
            except msgspec.DecodeError:  # (ValidationError too) the general parser judges
                h = None
        if h is None:
            return _general(i, head, counts, offset, buf)
        if h.interval_end_ns <= h.interval_start_ns:
            raise WireError("interval")
        return _Item(i, h.agent_id, h.boot_id, h.seq, h.node, h.interval_start_ns, h.interval_end_ns,
                     h.driver_version, h.allocations_unavailable, h.cluster, part, counts, offset, buf)
    except Exception:  # noqa: BLE001  # the strict decoder names the reason
        return _reason(buf)


def _general(i: int, head: bytes, counts: tuple[int, ...], offset: int, buf: bytes) -> _Item:
    """The header as the strict decoder reads it (``json.loads``, ``wire._check_header``); raises if refused."""
    header = json.loads(head)
    wire._check_header(header)  # the one definition of a valid header
    if b"\\ud" in head.lower():
        wire._check_unicode(header)
    part = _Part(header["strings"], [(p["uid"], p["namespace"], p["name"], p.get("labels", {})) for p in header["pods"]])
    return _Item(i, header["agent_id"], header["boot_id"], header["seq"], header["node"],
                 header["interval_start_ns"], header["interval_end_ns"], header.get("driver_version"),
                 wire.header_note(header.get("allocations_unavailable")), header.get("cluster"), part, counts,
                 offset, buf)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _reason(buf: bytes) -> str:
    try:
        wire.decode(buf)
    except WireError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001  # a decoder bug must not stop the partition
        return f"decoder failed unexpectedly: {type(exc).__name__}: {exc}"
    return "refused by the batch decoder although the strict decoder accepts it (please report)"


def _build(heads: Sequence[_Item], sources: Sequence[str | None]) -> dict[str, pa.Table]:
    n = len(heads)
    (pos, agent_id, boot_id, seq, node, start, end, driver, no_allocs, cluster, parts, counts_t, offsets, bufs) = (
        zip(*heads) if n else ((),) * len(_Item._fields))
    counts = np.array(counts_t, dtype=np.int64).reshape(n, len(_NAMES))
    ends = np.array(end, np.int64)
    # One global string list and pod list for the batch: each distinct part
    # (an agent's string table and pods, shared across its messages by the
    # HeaderCache) once, at a base offset its messages' references shift by.
    slot: dict[int, int] = {}
    distinct: list[_Part] = []
    which = np.empty(n, np.int64)
    for j, p in enumerate(parts):
        k = slot.get(id(p))
        if k is None:
            k = slot[id(p)] = len(distinct)
            distinct.append(p)
        which[j] = k
    n_str_d = np.array([p.n_strings for p in distinct], np.int64)
    n_pod_d = np.array([p.n_pods for p in distinct], np.int64)
    str_base = (np.cumsum(n_str_d) - n_str_d)[which]
    pod_base = (np.cumsum(n_pod_d) - n_pod_d)[which]
    n_strings, n_pods = n_str_d[which], n_pod_d[which]
    strings = _concat([p.strings for p in distinct])
    pod_cols = {k: _concat([getattr(p, k) for p in distinct]) for k in ("uid", "namespace", "name")}

    try:
        key = {
            "agent_id": pa.array(agent_id, pa.string()),
            "boot_id": pa.array(boot_id, pa.string()),
            "seq": pa.array(np.array(seq, np.uint64)),
            "node": pa.array(node, pa.string()),
            "interval_start_ns": pa.array(np.array(start, np.int64)),
            "interval_end_ns": pa.array(ends),
        }
        msgs = pa.table({
            **key,
            "schema_version": pa.array(np.full(n, wire.SCHEMA_VERSION, np.uint16)),
            "driver_version": pa.array(driver, pa.string()),
            "source": pa.array([sources[i] for i in pos], pa.string()),
            "allocations_unavailable": pa.array(no_allocs, pa.string()),
            "cluster": pa.array(cluster, pa.string()),  # null: the header named none (the default cluster)
            "_m": pa.array(np.arange(n, dtype=np.int32)),
        })
    except (pa.ArrowException, UnicodeError, OverflowError, TypeError) as exc:
        raise _BatchCheckFailed(f"{type(exc).__name__}: {exc}") from None
    out: dict[str, pa.Table] = {"messages": msgs}
    sizes = counts * _ITEMSIZE
    starts = (np.array(offsets, np.int64)[:, None] + np.cumsum(sizes, axis=1) - sizes) if n else sizes
    for t, (name, dt) in enumerate(wire.TABLES.items()):
        per_msg = counts[:, t]
        views = [memoryview(b)[s:s + z] for b, s, z in zip(bufs, starts[:, t].tolist(), sizes[:, t].tolist())]
        rows = np.frombuffer(b"".join(views), dtype=dt)
        owner32 = np.repeat(np.arange(n, dtype=np.int32), per_msg)
        owner = owner32.astype(np.intp)
        _check_values(name, rows, n_strings[owner], n_pods[owner])
        owner_arr = pa.array(owner32)
        cols: dict[str, pa.Array] = {
            k: (pa.DictionaryArray.from_arrays(owner_arr, v) if v.type == pa.string()  # no copy per row
                else v.take(owner_arr))
            for k, v in key.items()
        }
        cols["_m"] = owner_arr
        for col in dt.names or ():
            values = rows[col]
            if col in wire.STRING_COLUMNS[name]:
                idx = values.astype(np.int64)
                valid = idx != wire.NULL_STR
                cols[col] = _take(strings, np.where(valid, idx + str_base[owner], 0), valid)
            elif col == "pod":
                idx = values.astype(np.int64)
                valid = idx >= 0
                gidx = np.where(valid, idx + pod_base[owner], 0)
                for attr, out_col in (("uid", "pod_uid"), ("namespace", "namespace"), ("name", "pod")):
                    cols[out_col] = _take(pod_cols[attr], gidx, valid)
            elif values.dtype.kind == "f":
                cols[col] = pa.array(values, from_pandas=True)  # NaN -> NULL: missing, not zero
            else:
                cols[col] = pa.array(values)
        out[name] = pa.table(cols)
    part_ends = np.full(len(distinct), np.iinfo(np.int64).min, np.int64)
    np.maximum.at(part_ends, which, ends)
    part_clusters: list[str | None] = [None] * len(distinct)  # each part's cluster: its latest message's
    for k, _end, c in sorted(zip(which.tolist(), ends.tolist(), cluster), key=lambda t: (t[0], t[1])):
        part_clusters[k] = c
    out["pods"] = _pods_table(distinct, part_ends, part_clusters)
    return out


def _concat(arrays: list[pa.Array]) -> pa.Array:
    """One array of them all; a single "" when empty (a dictionary needs a value for masked slots)."""
    joined = pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())
    return joined if len(joined) else pa.array([""], pa.string())


def _check_values(name: str, rows: np.ndarray, n_strings: np.ndarray, n_pods: np.ndarray) -> None:
    """The reference and range checks of ``wire._check_references``, on a whole batch."""
    if not rows.size:
        return
    for col in wire.STRING_COLUMNS[name]:
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


def _pods_table(parts: Sequence[_Part], ends: np.ndarray, clusters: Sequence[str | None]) -> pa.Table:
    """Each pod once, as last seen in the batch (``ends``: the latest interval end per part; ``clusters``: the
    cluster its latest message named, None: none)."""
    if not parts:
        uid = pa.array([], pa.string())
        return pa.table({"pod_uid": uid, "namespace": uid, "name": uid, "labels": uid,
                         "last_seen_ns": pa.array([], pa.int64()), "cluster": uid})
    n_pods = np.array([p.n_pods for p in parts], np.int64)
    uid = pa.concat_arrays([p.uid for p in parts])
    table = pa.table({
        "pod_uid": uid,
        "namespace": pa.concat_arrays([p.namespace for p in parts]),
        "name": pa.concat_arrays([p.name for p in parts]),
        "labels": pa.concat_arrays([p.labels for p in parts]),
        "last_seen_ns": pa.array(np.repeat(ends, n_pods)),
        "cluster": pa.array([c for c, k in zip(clusters, n_pods.tolist()) for _ in range(k)], pa.string()),
    })
    if pc.count_distinct(uid).as_py() == len(uid):
        return table
    # A pod in several lists (it moved, or a node's list changed within the
    # batch): keep its row from the latest end; on a tie the later list wins.
    latest: dict[str, tuple[int, int]] = {}
    for row, (u, e) in enumerate(zip(uid.to_pylist(), table["last_seen_ns"].to_pylist())):
        seen = latest.get(u)
        if seen is None or seen[0] <= e:
            latest[u] = (e, row)
    return table.take(pa.array([row for _, row in latest.values()], pa.int64()))
