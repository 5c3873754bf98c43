"""Property-based fuzzing of the live OpenAPI document with schemathesis (bounded examples).

Every GET operation is called with generated parameters and an admin token
against the real server on simulator demo data. Checks: no 5xx, documented
status codes and content types, and bodies that validate against the
published response schemas.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.demo_data import build_demo_db
from tests.support.live_server import serving

pytestmark = pytest.mark.slow  # demo data, then hypothesis over every route
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    path = build_demo_db(tmp_path_factory.mktemp("fuzz") / "demo.duckdb", hours=4.0)
    with Store(path) as store:
        _, token = create_token(store, "admin")
    with serving(create_app(str(path))) as client:
        yield {"base": str(client.base_url), "token": token}


def test_live_openapi_contract(live: dict[str, Any]) -> None:
    """Each operation of the live document, up to 15 generated cases (one Hypothesis run per operation)."""
    schema = schemathesis.openapi.from_url(f"{live['base']}/openapi.json")
    headers = {"Authorization": f"Bearer {live['token']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.call_and_validate(base_url=live["base"], headers=headers, checks=CHECKS)

        run()
