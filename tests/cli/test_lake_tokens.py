"""``gpuledger token ... --lake``: tokens in the lake's metadata database (SQLite here), in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.api.tokens import verify_token  # noqa: E402
from gpuledger.cli import main  # noqa: E402
from gpuledger.store.lake.meta import SqlMetadata  # noqa: E402


def test_token_create_list_revoke_on_the_lakes_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path}/catalog.db"
    assert main(["token", "create", "--role", "tenant", "--tenant", "nlp", "--name", "grafana", "--lake", uri]) == 0
    token = capsys.readouterr().out.strip()
    meta = SqlMetadata(uri)
    with meta.tokens() as tokens:
        who, _ = verify_token(tokens, token)
    assert who is not None and who.tenant == "nlp"
    assert main(["token", "list", "--lake", uri]) == 0
    listed = capsys.readouterr().out
    assert who.token_id in listed and "active" in listed and token not in listed
    assert main(["token", "revoke", who.token_id, "--lake", uri]) == 0
    with meta.tokens() as tokens:
        assert verify_token(tokens, token)[0] is None
    assert main(["token", "revoke", who.token_id, "--lake", uri]) == 2  # already revoked: error with a hint
    assert "already revoked" in capsys.readouterr().err
    meta.close()
