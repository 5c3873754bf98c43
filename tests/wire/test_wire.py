"""Wire schema v1: round trip, every way decode refuses, and fuzzing.

Specification: ``decode(encode(m)) == m``; any other input raises WireError
with a reason a person can act on, never another exception; and whatever
decode accepts, the store can hold (no poison message).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger import wire
from gpuledger.errors import WireError
from gpuledger.store import Store
from tests.support.factories import make_message
from tests.support.wire_frames import (
    COLUMNS,
    FRAME,
    HEADER_KEYS,
    REFERENCES,
    column_values,
    join,
    json_values,
    split,
    text_with_surrogates,
)


def with_header(**changes: Any) -> bytes:
    header, counts, tables = split(wire.encode(make_message()))
    header.update(changes)
    return join(header, counts, tables)


def assert_same(a: wire.Message, b: wire.Message) -> None:
    for name in ("agent_id", "boot_id", "seq", "node", "interval_start_ns", "interval_end_ns", "strings", "pods",
                 "driver_version", "schema_version", "extra"):
        assert getattr(a, name) == getattr(b, name), name
    for name in wire.TABLES:
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name  # NaN-safe, bit exact


# --- round trip ----------------------------------------------------------------


@pytest.mark.parametrize("n_gpus", [0, 1, 8])
def test_round_trip_is_exact(n_gpus: int) -> None:
    msg = make_message(seq=7, n_gpus=n_gpus)
    assert_same(wire.decode(wire.encode(msg)), msg)


def test_round_trip_keeps_missing_as_nan_and_unknown_header_keys() -> None:
    msg = make_message()
    msg.extra = {"agent_version": "0.1.0"}
    back = wire.decode(wire.encode(msg))
    assert np.isnan(back.devices["mem_temp_c"]).all()
    assert back.string(int(back.field_errors["reason"][0])) == "NotSupported"
    assert back.extra == {"agent_version": "0.1.0"}


def test_non_ascii_text_survives() -> None:
    msg = make_message(node="nœud-🚀")
    msg.pods[0]["labels"] = {"équipe": "données"}
    back = wire.decode(wire.encode(msg))
    assert back.node == "nœud-🚀" and back.pods[0]["labels"] == {"équipe": "données"}


# --- every refusal has a readable reason ---------------------------------------


def refusal(buf: bytes) -> str:
    with pytest.raises(WireError) as info:
        wire.decode(buf)
    return str(info.value)


def test_every_truncation_is_refused() -> None:
    buf = wire.encode(make_message())
    for cut in range(len(buf)):
        reason = refusal(buf[:cut])
        assert "bad magic" in reason or "length mismatch" in reason, (cut, reason)


def test_trailing_bytes_are_refused() -> None:
    assert "length mismatch" in refusal(wire.encode(make_message()) + b"\0")


@pytest.mark.parametrize("buf", [b"", b"GPLW", b"{}", b"XXXX" + bytes(24), b"\x00" * 64])
def test_not_a_message(buf: bytes) -> None:
    assert "not a gpuledger message" in refusal(buf)


def test_unknown_version_names_what_this_build_reads() -> None:
    header, counts, tables = split(wire.encode(make_message()))
    reason = refusal(join(header, counts, tables, version=2))
    assert "unknown schema version 2" in reason and "[1]" in reason


def test_oversized_message() -> None:
    assert "exceeds" in refusal(b"GPLW" + bytes(wire.MAX_MESSAGE_BYTES))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "JSON header unreadable"),
        (b"\xff\xfe\xfa", "JSON header unreadable"),
        (b"[1, 2]", "not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_unreadable_header(raw: bytes, expected: str) -> None:
    assert expected in refusal(join(None, [0, 0, 0, 0], b"", raw_header=raw))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"agent_id": ""}, "agent_id must be a non-empty string"),
        ({"node": 5}, "node must be a non-empty string"),
        ({"seq": -1}, "seq must be a non-negative 64-bit integer"),
        ({"seq": 2**64}, "seq must be a non-negative 64-bit integer"),
        ({"seq": True}, "seq must be a non-negative 64-bit integer"),
        ({"seq": 1.5}, "seq must be a non-negative 64-bit integer"),
        ({"interval_end_ns": 0}, "interval_end_ns must be after interval_start_ns"),
        ({"strings": "abc"}, "strings must be a list of strings"),
        ({"pods": [{"uid": "u"}]}, "pods must be a list of"),
        ({"pods": [{"uid": "u", "namespace": "n", "name": "p", "labels": {"k": 1}}]}, "pods must be a list of"),
        ({"driver_version": {"major": 550}}, "driver_version must be a string or null"),
        ({"cluster": ""}, "cluster must be a non-empty string"),
        ({"cluster": 7}, "cluster must be a non-empty string"),
        ({"strings": ["\ud800"] + ["x"] * 10}, "lone UTF-16 surrogate"),
    ],
)
def test_bad_header_field(changes: dict[str, Any], expected: str) -> None:
    assert expected in refusal(with_header(**changes))


def test_the_cluster_is_an_optional_header_key() -> None:
    named = make_message(seq=1)
    named.cluster = "gpu-east"
    buf = wire.encode(named)
    assert b'"cluster":"gpu-east"' in buf and wire.decode(buf).cluster == "gpu-east"
    assert "cluster" not in wire.decode(buf).extra
    v1 = wire.encode(make_message(seq=1))  # what an agent without the setting (or older than it) sends
    assert b'"cluster"' not in v1 and wire.decode(v1).cluster is None
    assert wire.peek_version(buf) == wire.peek_version(v1) == 1  # no new schema version: v1 readers take both
    assert wire.decode(with_header(cluster=None)).cluster is None  # null: as absent


def test_missing_header_keys_are_named() -> None:
    header, counts, tables = split(wire.encode(make_message()))
    del header["boot_id"], header["seq"]
    assert "header lacks boot_id, seq" in refusal(join(header, counts, tables))


def rebuild(mutate: Any) -> bytes:
    msg = make_message()
    mutate(msg)
    return wire.encode(msg)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda m: m.devices["uuid"].__setitem__(0, len(m.strings)), "devices.uuid points past the string table"),
        (lambda m: m.processes["container"].__setitem__(0, 10**6), "processes.container points past the string table"),
        (lambda m: m.allocations["resource"].__setitem__(1, 999), "allocations.resource points past the string table"),
        (lambda m: m.field_errors["reason"].__setitem__(0, 999), "field_errors.reason points past the string table"),
        (lambda m: m.field_errors["field"].__setitem__(0, wire.NULL_STR), "field_errors.field must name a string"),
        (lambda m: m.processes["pod"].__setitem__(0, len(m.pods)), "processes.pod points past the pod table"),
        (lambda m: m.allocations["pod"].__setitem__(0, -2), "allocations.pod points past the pod table"),
        (lambda m: m.devices["slice_fraction"].__setitem__(0, 0.0), "slice_fraction must be in (0, 1]"),
        (lambda m: m.devices["slice_fraction"].__setitem__(0, np.nan), "slice_fraction must be in (0, 1]"),
        (lambda m: m.allocations["share"].__setitem__(0, 1.5), "share must be in [0, 1]"),
        (lambda m: m.devices["gpu_util"].__setitem__(0, 1.01), "gpu_util must be a fraction"),
    ],
)
def test_bad_table_reference_or_value(mutate: Any, expected: str) -> None:
    assert expected in refusal(rebuild(mutate))


def test_null_references_and_missing_values_are_allowed() -> None:
    def mutate(m: wire.Message) -> None:
        m.processes["pod"][0] = wire.NULL_POD
        m.devices["uuid"][0] = wire.NULL_STR
        m.devices["gpu_util"][0] = np.nan

    back = wire.decode(rebuild(mutate))
    assert back.string(int(back.devices["uuid"][0])) is None


# --- fuzzing ---------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_wire_error(buf: bytes) -> None:
    try:
        wire.decode(buf)
    except WireError:
        pass


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 3), min_size=4, max_size=4))
def test_arbitrary_bytes_behind_a_valid_frame_only_raise_wire_error(body: bytes, counts: list[int]) -> None:
    head_len = len(body) - sum(n * dt.itemsize for n, dt in zip(counts, wire.TABLES.values()))
    buf = FRAME.pack(wire.MAGIC, 1, 0, max(0, head_len), *counts) + body
    try:
        wire.decode(buf)
    except WireError:
        pass


@pytest.mark.slow
def test_whatever_decodes_can_be_stored() -> None:
    """Mutated header fields and table cells: decode refuses, or the store accepts it."""
    store = Store()
    seq = iter(range(10**9))

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        msg = make_message(seq=next(seq))  # fresh key, so the store really writes it
        for _ in range(data.draw(st.integers(0, 3))):
            table, column = data.draw(st.sampled_from(REFERENCES) | st.sampled_from(COLUMNS))
            arr = getattr(msg, table)
            arr[column][data.draw(st.integers(0, len(arr) - 1))] = data.draw(column_values(arr.dtype[column]))
        header, counts, tables = split(wire.encode(msg))
        for _ in range(data.draw(st.integers(0, 1))):
            key = data.draw(st.sampled_from(["strings", "pods"]) | st.sampled_from(HEADER_KEYS))
            if key == "strings":
                header["strings"][data.draw(st.integers(0, len(header["strings"]) - 1))] = data.draw(text_with_surrogates)
            elif key == "pods":
                pod = header["pods"][0]
                pod[data.draw(st.sampled_from(["uid", "namespace", "name", "labels"]))] = data.draw(
                    text_with_surrogates | st.dictionaries(text_with_surrogates, text_with_surrogates, max_size=2) | json_values)
            else:
                header[key] = data.draw(json_values | text_with_surrogates)
        try:
            decoded = wire.decode(join(header, counts, tables))
        except WireError:
            return
        store.write_messages([decoded])

    check()
    assert store.count("messages") > 0


def test_the_wire_names_its_record_tables_and_string_columns_once() -> None:
    assert wire.RECORD_TABLES == tuple(wire.TABLES) == ("devices", "processes", "allocations", "field_errors")
    for table, cols in wire.STRING_COLUMNS.items():  # each a string-table index (u4) of its record
        assert all(wire.TABLES[table][c] == np.dtype("<u4") for c in cols), table
