"""Encoded wire messages taken apart and put back together, and hypothesis strategies for
their header values and table cells: what the wire, batch-decode and poison tests share.

``split(buf)`` -> (JSON header, table counts, table bytes); ``join`` reverses it
(optionally with another version or raw header bytes). The frame layout is
``gpuledger/wire.py``'s: magic, version, flags, header length, one count per table.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from hypothesis import strategies as st

from gpuledger import wire

FRAME = struct.Struct("<4sHHIIIII")


def split(buf: bytes) -> tuple[dict[str, Any], list[int], bytes]:
    """(JSON header, table counts, table bytes) of an encoded message."""
    _, _, _, head_len, *counts = FRAME.unpack_from(buf, 0)
    return json.loads(buf[FRAME.size : FRAME.size + head_len]), counts, buf[FRAME.size + head_len :]


def join(header: Any, counts: list[int], tables: bytes, *, version: int = 1, raw_header: bytes | None = None) -> bytes:
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    return FRAME.pack(wire.MAGIC, version, 0, len(head), *counts) + head + tables


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
HEADER_KEYS = ["agent_id", "boot_id", "seq", "node", "interval_start_ns", "interval_end_ns", "strings", "pods",
               "driver_version", "extra_key"]


def column_values(dtype: np.dtype) -> st.SearchStrategy[Any]:
    """Edge values of one numeric column: the limits, small indices, null markers."""
    if dtype.kind == "f":
        return st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.0, 0.5, 1.0, 2.0, 1e300])
    lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    edges = sorted(v for v in {lo, -2, -1, 0, 1, 3, hi} if lo <= v <= hi)  # u4 hi is NULL_STR
    return st.sampled_from(edges)


# Text as JSON can carry it: NUL, non-ASCII, and lone surrogates ("\\ud800" in JSON).
# (st.text drops surrogates from any alphabet, hence lists of characters.)
text_with_surrogates = st.lists(
    st.sampled_from(["a", "é", "🚀", "\x00", "\ud800", "\udfff"]) | st.characters(), min_size=1, max_size=4
).map("".join)
COLUMNS = [(table, column) for table, dt in wire.TABLES.items() for column in dt.names or ()]
_STRING_REFS = {"uuid", "model", "profile", "pod", "container", "slurm_job", "resource", "field", "reason"}
REFERENCES = [(t, c) for t, c in COLUMNS if c in _STRING_REFS]
