"""Shared query parameters: each bad value names its own problem (issue 15)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gpuledger.api.errors import ApiError
from gpuledger.api.params import filter_values, join_values, parse_moment, parse_month


def _error(call: object, *args: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1969-12-31",
                                  "9999-06-01", "-99999999999999999"])
def test_a_valid_moment_out_of_range_is_called_out_of_range(text: str) -> None:
    err = _error(parse_moment, text, "start")  # 0001-01-01T00:00+01:00 was "not an ISO 8601 date/datetime"
    assert err.code.code == "bad_period" and "is outside 1970-01-01..9999-01-01" in err.message, err.message
    assert "not an ISO 8601" not in err.message


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01", "１７４０７８７２０００００"])
def test_a_malformed_moment_is_called_malformed(text: str) -> None:
    assert "is not an ISO 8601 date/datetime" in _error(parse_moment, text, "start").message


def test_moments_in_range_parse_as_before() -> None:
    assert parse_moment("2025-03-01", "start") == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_moment("2025-03-01T01:00:00+01:00", "start") == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_moment("1740787200000", "start") == datetime(2025, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(("month", "says"), [("9999-12", "out of range"), ("２０２６-１０", "ASCII"),
                                             ("2026-00", "MM 01..12")])
def test_a_bad_month_names_its_problem(month: str, says: str) -> None:
    err = _error(parse_month, month)
    assert err.code.code == "bad_month" and says in err.message and "year 10000" not in err.message, err.message


@pytest.mark.parametrize(("given", "values"), [
    (None, ()), ("a", ("a",)), ("a,b", ("a", "b")), (" a , b ,, a", ("a", "b")),
    (['"Acme, Inc.",b'], ("Acme, Inc.", "b")), (["Acme, Inc.", "b"], ("Acme, Inc.", "b")),
    (["Acme, Inc.", ""], ("Acme, Inc.",)), ('"say ""hi"", world"', ('say "hi", world',)),
])
def test_filter_values_repeated_whole_once_comma_separated(given: str | list[str] | None,
                                                          values: tuple[str, ...]) -> None:
    assert filter_values(given) == values


@pytest.mark.parametrize("values", [("a",), ("a", "b"), ("Acme, Inc.",), ('say "hi", world', "x"), ("O'Brien",)])
def test_join_values_is_read_back_by_filter_values(values: tuple[str, ...]) -> None:
    assert filter_values(join_values(values)) == values


@pytest.mark.parametrize("raw", ["a\rb", "a\nb,c", '"unterminated', 'x"y', "\x00,\r\n"])
def test_filter_values_take_any_text(raw: str) -> None:
    assert isinstance(filter_values(raw), tuple)  # the csv module raised on a CR: a 500 found by schemathesis
