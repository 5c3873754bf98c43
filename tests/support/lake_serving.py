"""A lake made from a DuckDB file, and the replicas `gpuledger serve --lake` builds on it (tests of serving from it).

Shared by tests/api/test_lake_serving.py and tests/analytics/test_imports_lake.py.
SQLite catalog and a local warehouse under the test's directory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuledger.api.app import create_app
from gpuledger.api.tokens import TokenStore, create_token, token_path
from gpuledger.store.lake import LakeConfig, LakeStore
from gpuledger.store.lake.meta import SqlMetadata, SqlTokens
from gpuledger.store.lake.migrate import migrate_to_lake
from gpuledger.store.lake.replica import LakeReplica


@dataclass
class Lake:
    db: Path
    config: LakeConfig
    store: LakeStore
    meta: SqlMetadata
    root: Path
    admin: str
    tenant: str


def make_lake(root: Path, db: Path) -> Lake:
    """A copy of the demo file with two tokens, migrated into a new lake under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    copy = root / "gpuledger.duckdb"
    shutil.copy(db, copy)
    with TokenStore(token_path(copy)) as tokens:
        _, admin = create_token(tokens, "admin", name="ops")
        _, tenant = create_token(tokens, "tenant", "nlp")
    config = LakeConfig(f"sqlite:///{root}/catalog.db", str(root / "warehouse"), unavailable_s=0.5)
    lake = Lake(copy, config, LakeStore(config), SqlMetadata(config.catalog_uri), root, admin, tenant)
    migrate_to_lake(copy, lake.store, lake.meta)
    return lake


def replica(lake: Lake, name: str, **kw: Any) -> LakeReplica:
    rep = LakeReplica(lake.store, lake.meta, lake.root / name, **kw)
    rep.sync()
    return rep


def lake_app(lake: Lake, rep: LakeReplica) -> Any:
    """The app `gpuledger serve --lake` builds (cli/serve.py)."""
    return create_app(rep.path, tokens=SqlTokens(lake.meta.engine), token_version=lake.meta.token_version,
                      health=rep.health)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
