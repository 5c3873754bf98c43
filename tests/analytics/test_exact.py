"""Exact sums: one integer per ledger value, the same in Polars and DuckDB, so any order of adding gives the same bits."""

from __future__ import annotations

import math
import random

import duckdb
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger.analytics.exact import UNITS, exact, exact_sql, measure, measure_sql

#: Values whose scaled product is a tie (x.5), tiny, huge, negative, and the non-finite ones.
EDGES = [0.0, -0.0, 2.5e-12, 3.5e-12, 0.5e-12, -2.5e-12, 1.0000000000005, 10 / 3, 1e-3, 1e-300, 3600.0,
         9.0e6, 0.1 + 0.2, -7.25, math.nan, math.inf, -math.inf, None]


def _both(values: list[float | None], name: str) -> tuple[list[int | None], list[int | None]]:
    polars = pl.DataFrame({name: values}, schema={name: pl.Float64}).select(exact(name))[UNITS[name][0]].to_list()
    con = duckdb.connect()
    duck = con.execute(f"SELECT list({exact_sql(name)} ORDER BY i) FROM (SELECT unnest(?::DOUBLE[]) AS {name}, "
                       "unnest(range(?)) AS i)", [values, len(values)]).fetchone()
    assert duck is not None
    return polars, duck[0]


def test_polars_and_duckdb_round_every_value_to_the_same_integer() -> None:
    for name in UNITS:
        polars, duck = _both(EDGES, name)
        assert polars == duck
    polars, _ = _both(EDGES, "gpu_seconds")
    assert polars[2:6] == [3, 4, 1, -3]  # ties go away from zero, in both
    assert polars[-4:] == [None, None, None, None]  # not finite, or missing: no integer (null, never 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(min_value=0, max_value=5e3, allow_nan=False), min_size=1, max_size=50))
def test_polars_and_duckdb_agree_on_any_gpu_seconds(values: list[float]) -> None:
    polars, duck = _both(list(values), "gpu_seconds")
    assert polars == duck


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=-(2**62), max_value=2**62), min_size=1, max_size=50))
def test_an_exact_sum_reads_back_as_the_same_float_in_polars_and_duckdb(sums: list[int]) -> None:
    sums = [*sums, 429_674_662_438_431]  # Polars divides by a scalar as x * (1/y): this one came out 1 ulp apart
    for name in UNITS:
        column = UNITS[name][0]
        polars = pl.DataFrame({column: sums}, schema={column: pl.Int64}).select(measure(name))[name].to_list()
        duck = duckdb.connect().execute(f"SELECT list({measure_sql(name, column)} ORDER BY i) FROM (SELECT "
                                        f"unnest(?::BIGINT[]) AS {column}, unnest(range(?)) AS i)",
                                        [sums, len(sums)]).fetchone()
        assert duck is not None and polars == duck[0]


def test_an_exact_sum_is_the_same_in_any_order_where_the_float_sum_is_not() -> None:
    rng = random.Random(15)
    values = [rng.uniform(0, 10) * rng.choice([1, 1 / 3, 1 / 7]) for _ in range(5000)]
    shuffled = [*values]
    floats, exacts = set(), set()
    for _ in range(20):
        rng.shuffle(shuffled)
        frame = pl.DataFrame({"gpu_seconds": shuffled})
        floats.add(frame["gpu_seconds"].sum())
        exacts.add(frame.select(exact("gpu_seconds").cast(pl.Int128).sum()).with_columns(
            measure("gpu_seconds"))["gpu_seconds"].item())
    assert len(floats) > 1  # the float sum's last bits follow the order ...
    assert len(exacts) == 1  # ... the exact one does not
    assert abs(exacts.pop() - math.fsum(values)) <= len(values) * 0.5e-12 * 1.01  # half a ps per value at most
