"""The whole-poll decoder is the strict decoder, only faster.

Specification: for any mix of valid and damaged records, ``decode_batch``
refuses exactly the records ``wire.decode`` refuses, with the same reasons,
and what it accepts is stored row for row as the per-message path stores it.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger import wire
from gpuledger.errors import WireError
from gpuledger.ingest.batch import ArrowBatch, HeaderCache, decode_batch
from gpuledger.ingest.clock import ClockCheck
from gpuledger.store import Store
from tests.support.factories import make_message, make_stream
from tests.support.wire_frames import (
    COLUMNS,
    HEADER_KEYS,
    REFERENCES,
    column_values,
    join,
    json_values,
    split,
    text_with_surrogates,
)

TABLES = ("messages", "devices", "processes", "allocations", "field_errors", "pods")


def contents(store: Store) -> dict[str, pl.DataFrame]:
    return {t: store.query(f"SELECT * EXCLUDE (ingested_at) FROM {t} ORDER BY ALL" if t == "messages"
                           else f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}


def damaged(data: st.DataObject, msg: wire.Message) -> bytes:
    """``msg`` encoded, with up to three table cells and one header field changed, or cut short."""
    for _ in range(data.draw(st.integers(0, 3))):
        table, column = data.draw(st.sampled_from(REFERENCES) | st.sampled_from(COLUMNS))
        arr = getattr(msg, table)
        arr[column][data.draw(st.integers(0, len(arr) - 1))] = data.draw(column_values(arr.dtype[column]))
    header, counts, tables = split(wire.encode(msg))
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(["strings", "pods"]) | st.sampled_from(HEADER_KEYS))
        if key == "strings":
            header["strings"][data.draw(st.integers(0, len(header["strings"]) - 1))] = data.draw(text_with_surrogates)
        elif key == "pods":
            header["pods"][0][data.draw(st.sampled_from(["uid", "namespace", "name", "labels"]))] = data.draw(
                text_with_surrogates | st.dictionaries(text_with_surrogates, text_with_surrogates, max_size=2)
                | json_values)
        else:
            header[key] = data.draw(json_values | text_with_surrogates)
    buf = join(header, counts, tables)
    return buf[: data.draw(st.integers(0, len(buf)))] if data.draw(st.integers(0, 9)) == 0 else buf


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_batch_decode_refuses_and_stores_exactly_what_the_strict_decoder_does(data: st.DataObject) -> None:
    values: list[bytes | None] = []
    for i in range(data.draw(st.integers(1, 8))):
        msg = make_message(agent_id=f"a{i % 2}", seq=i, node=f"n{i % 2}")
        kind = data.draw(st.sampled_from(["valid", "damaged", "random", "tombstone"]))
        if kind == "valid":
            values.append(wire.encode(msg))
        elif kind == "damaged":
            values.append(damaged(data, msg))
        elif kind == "random":
            values.append(data.draw(st.binary(max_size=64)))
        else:
            values.append(None)
    sources = [f"t/0/{i}" for i in range(len(values))]

    strict: dict[int, str] = {}
    decoded = []
    for i, v in enumerate(values):
        if v is None:
            strict[i] = "record has no value (a tombstone)"
            continue
        try:
            decoded.append((wire.decode(v), sources[i]))
        except WireError as exc:
            strict[i] = str(exc)
    warm = data.draw(st.booleans())
    cache = HeaderCache()
    if warm:  # the agents' valid headers seen before: unchanged lists come from the cache, changed ones must not
        decode_batch([wire.encode(make_message(agent_id=f"a{i}", seq=100 + i, node=f"n{i}")) for i in range(2)],
                     seen=cache)
    batch = decode_batch(values, sources, cache)
    assert batch.failed == strict

    fast, slow = Store(), Store()
    assert fast.write_arrow(batch.tables) == batch.n_messages
    slow.write_messages([m for m, _ in decoded], [s for _, s in decoded])
    got, want = contents(fast), contents(slow)
    for t in TABLES:
        assert got[t].equals(want[t]), t


def test_header_cache_still_validates_a_changed_pod_list() -> None:
    cache = HeaderCache()
    good = make_message(seq=1)
    bad = make_message(seq=2)
    bad.pods = [{**bad.pods[0], "labels": {"team": 7}}, *bad.pods[1:]]
    header, counts, tables = split(wire.encode(bad))
    batch = decode_batch([wire.encode(good), join(header, counts, tables)], seen=cache)
    assert batch.index == [0] and "pods" in batch.failed[1]
    again = decode_batch([wire.encode(make_message(seq=3))], seen=cache)  # the cached (good) list still passes
    assert again.index == [0]


def test_the_cluster_header_is_stored_on_messages_and_pods_null_when_absent() -> None:
    east = make_message(agent_id="gpu-node-0", boot_id="e", seq=1)
    east.cluster = "east"
    west = make_message(agent_id="gpu-node-0", boot_id="w", seq=1)  # same node, pods, uids: another cluster
    west.cluster = "west"
    v1 = make_message(agent_id="old-agent", boot_id="o", seq=1, namespace="team-b")
    v1.pods = [{**p, "uid": "old-" + p["uid"]} for p in v1.pods]
    store = Store()
    batch = decode_batch([wire.encode(m) for m in (east, west, v1)])
    assert store.write_arrow(batch.tables) == 3
    assert store.query("SELECT boot_id, cluster FROM messages ORDER BY 1").rows() == [
        ("e", "east"), ("o", None), ("w", "west")]
    pods = store.query("SELECT namespace, cluster, count(*) AS n FROM pods GROUP BY ALL ORDER BY 1").rows()
    assert pods == [("team-a", "west", 2), ("team-b", None, 2)]  # a pod uid as last seen (its latest message)
    slow = Store()  # the strict path stores the same
    slow.write_messages([wire.decode(wire.encode(m)) for m in (east, west, v1)], [None] * 3)
    assert slow.query("SELECT boot_id, cluster FROM messages ORDER BY 1").rows() == [
        ("e", "east"), ("o", None), ("w", "west")]


def test_repeats_inside_a_batch_and_across_batches_are_stored_once() -> None:
    store = Store()
    values = [wire.encode(m) for m in make_stream(10)]
    assert store.write_arrow(decode_batch(values + values[:4]).tables) == 10
    assert store.write_arrow(decode_batch(values[5:]).tables) == 0
    assert store.count("messages") == 10 and store.count("devices") == 20


def test_clock_check_quarantines_the_future_and_the_ancient_with_reasons() -> None:
    now = 1_790_812_800 * 10**9
    tick = 10 * 10**9
    values = [
        wire.encode(make_message(seq=1, start_ns=now - 3600 * 10**9)),  # an hour late: a spool replay, kept
        wire.encode(make_message(seq=2, start_ns=now + 3600 * 10**9)),  # an hour ahead: quarantined
        wire.encode(make_message(seq=3, start_ns=now - 30 * 86400 * 10**9)),  # a month old: quarantined
        wire.encode(make_message(seq=4, start_ns=now + 60 * 10**9 - tick)),  # within the skew bound: kept
    ]
    kept, out = ClockCheck(max_future_s=300, max_age_s=7 * 86400).apply(decode_batch(values), now)
    assert kept.index == [0, 3]
    assert [i for i, _ in out] == [1, 2]
    assert "3610 s in the future" in out[0][1] and out[0][1].startswith("quarantined:")
    assert "30.00 days ago" in out[1][1] and "ingest_max_age_s" in out[1][1]
    assert kept.tables["devices"].num_rows == 4


def test_a_quarantined_message_changes_no_pod_and_no_label() -> None:
    """Issue 15: a future-dated message is quarantined, and its pods must not win "latest seen".

    In the outside probe its labels re-labelled 127 GPU-hours of valid usage.
    """
    now = 1_790_812_800 * 10**9
    valid = make_message(seq=1, start_ns=now - 3600 * 10**9, namespace="team-a")
    future = make_message(seq=2, start_ns=now + 3600 * 10**9, namespace="team-a")
    future.pods = [{**p, "labels": {"team": "intruder"}} for p in future.pods]  # same pods, other labels
    alone = make_message(agent_id="x", node="n9", seq=3, start_ns=now + 7200 * 10**9, namespace="ghost")
    alone.pods = [{**p, "uid": f"ghost-{i}"} for i, p in enumerate(alone.pods)]  # pods only it names
    batch = decode_batch([wire.encode(m) for m in (valid, future, alone)])
    kept, out = ClockCheck(max_future_s=300, max_age_s=7 * 86400).apply(batch, now)
    assert kept.index == [0] and [i for i, _ in out] == [1, 2]
    pods = kept.tables["pods"].to_pylist()
    assert {p["pod_uid"] for p in pods} == {p["uid"] for p in valid.pods}  # no ghost pod
    assert {json.loads(p["labels"])["team"] for p in pods} == {"team-a"}  # no intruder label
    assert {p["last_seen_ns"] for p in pods} == {valid.interval_end_ns}  # no future last_seen
    with Store() as store:
        store.write_arrow(kept.tables)
        assert store.query("SELECT DISTINCT labels FROM pods")["labels"].to_list() == ['{"team": "team-a"}']


def test_unknown_header_keys_and_nulls_survive_the_batch_path() -> None:
    msg = make_message(seq=9, driver_version=None)
    msg.extra = {"future_field": [1, 2]}
    batch = decode_batch([wire.encode(msg)])
    assert batch.index == [0] and batch.tables["messages"]["driver_version"].to_pylist() == [None]
    assert batch.tables["devices"]["mem_temp_c"].null_count == 2  # NaN -> NULL: missing, not zero
    assert batch.tables["devices"]["profile"].null_count == 2




def strict_and_batch(values: list[bytes]) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame], ArrowBatch]:
    """Store ``values`` through the strict decoder and through the batch decoder (shared cache, one
    message per batch, then all in one batch); the two batch stores must agree."""
    cache = HeaderCache()
    one_by_one, whole, slow = Store(), Store(), Store()
    for v in values:
        one_by_one.write_arrow(decode_batch([v], seen=cache).tables)
    batch = decode_batch(values)
    whole.write_arrow(batch.tables)
    slow.write_messages([wire.decode(v) for v in values])
    assert all(contents(one_by_one)[t].equals(contents(whole)[t]) for t in TABLES)
    return contents(whole), contents(slow), batch


def test_headers_the_typed_decoder_does_not_take_are_judged_as_the_strict_decoder_does() -> None:
    def with_raw_header(seq: int, edit: Any) -> bytes:
        header, counts, tables = split(wire.encode(make_message(seq=seq)))
        return join(None, counts, tables, raw_header=edit(json.dumps(header).encode()))

    values = [
        with_raw_header(1, lambda h: h.replace(b'"seq": 1', b'"seq": -1, "seq": 1')),  # duplicate key: the last counts
        with_raw_header(2, lambda h: h[:-1] + b', "future": NaN}'),  # NaN in an unknown field: json.loads takes it
        with_raw_header(3, lambda h: h.replace(b'"team": "team-a"', b'"team": "\\u00e9quipe"')),  # escaped non-ASCII
        with_raw_header(4, lambda h: h.replace(b'"team": "team-a"', '"team": "équipe-漢"'.encode())),  # raw UTF-8
    ]
    got, want, batch = strict_and_batch(values)
    assert batch.failed == {} and batch.n_messages == 4
    for t in TABLES:
        assert got[t].equals(want[t]), t
    assert {json.loads(x)["team"] for x in got["pods"]["labels"]} == {"équipe-漢"}  # seq 4: the latest


def test_invalid_utf8_in_a_skipped_header_field_is_refused_like_the_strict_decoder() -> None:
    header, counts, tables = split(wire.encode(make_message(seq=1)))
    bad = join(None, counts, tables, raw_header=json.dumps(header).encode()[:-1] + b', "future": "\xff"}')
    with pytest.raises(WireError) as exc:
        wire.decode(bad)
    batch = decode_batch([bad, wire.encode(make_message(seq=2))])
    assert batch.index == [1] and batch.failed == {0: str(exc.value)}


@pytest.mark.slow
def test_pods_changing_inside_a_batch_keep_the_latest_labels_whatever_the_order() -> None:
    def tick(seq: int, team: str) -> bytes:
        m = make_message(seq=seq)
        m.pods = [{**p, "labels": {"team": team}} for p in m.pods]
        return wire.encode(m)

    for values in ([tick(1, "old"), tick(2, "new")], [tick(2, "new"), tick(1, "old")],
                   [tick(1, "old"), tick(2, "new"), tick(3, "old"), tick(4, "new")]):
        got, want, _ = strict_and_batch(values)
        assert got["pods"].equals(want["pods"])
        assert {json.loads(x)["team"] for x in got["pods"]["labels"]} == {"new"}


def test_the_header_cache_reuses_an_unchanged_part_and_rebuilds_a_changed_one() -> None:
    cache = HeaderCache()
    stream = [wire.encode(m) for m in make_stream(6)]
    decode_batch(stream[:3], seen=cache)
    decode_batch(stream[3:], seen=cache)
    changed = make_message(seq=99)
    changed.pods = changed.pods[:1]
    decode_batch([wire.encode(changed)], seen=cache)
    agents = {wire.decode(v).agent_id for v in stream}
    assert cache.misses == len(agents) + 1
