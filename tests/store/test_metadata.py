"""The small-metadata seam's two homes: the embedded file and the lake's SQL database (SQLite here).

Both refuse a second close of one month and keep nothing of it; token SQL
written once (``api/tokens.py``) runs on either; only the SHA-256 is stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.api.tokens import create_token, list_tokens, revoke_token, verify_token  # noqa: E402
from gpuledger.store import Store  # noqa: E402
from gpuledger.store.lake.meta import SqlMetadata  # noqa: E402
from gpuledger.store.metadata import FileMetadata, Metadata, MonthAlreadyClosed  # noqa: E402
from tests.support.closes import a_close  # noqa: E402


@pytest.fixture(params=["file", "sql"])
def meta(request: pytest.FixtureRequest, tmp_path: Path) -> Metadata:
    if request.param == "file":
        Store(tmp_path / "g.duckdb").close()
        return FileMetadata(tmp_path / "g.duckdb")
    return SqlMetadata(f"sqlite:///{tmp_path}/catalog.db")


def test_a_month_closes_once_with_its_bytes_and_rows(meta: Metadata) -> None:
    close, billed = a_close("2026-10")
    meta.record_close(close, billed)
    with pytest.raises(MonthAlreadyClosed):
        meta.record_close(close, billed)
    got = meta.closes()
    assert got["month"].to_list() == ["2026-10"] and bytes(got["csv"][0]) == b"csv,bytes\n"
    assert got["closed_at"][0] == datetime(2026, 11, 1, tzinfo=UTC)
    assert meta.billed().select(billed.columns).equals(billed)  # one set of billed rows, not two


def test_tokens_work_the_same_on_either_home(meta: Metadata) -> None:
    with meta.tokens() as tokens:
        token_id, token = create_token(tokens, "tenant", "nlp", "grafana")
        principal, _ = verify_token(tokens, token)
        assert principal is not None and (principal.role, principal.tenant) == ("tenant", "nlp")
        secret = token.split("_", 2)[2]  # glt_<hex id>_<secret>; the secret (token_urlsafe) may hold "_" itself
        assert len(secret) >= 40 and secret not in str(tokens.query("SELECT * FROM api_tokens").rows())
        revoke_token(tokens, token_id)
        assert verify_token(tokens, token)[0] is None
        assert list_tokens(tokens)["revoked_at"][0] is not None
