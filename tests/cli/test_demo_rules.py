"""The demo's tenancy rules: one tenant per demo team, whether or not a pod carries the ``team`` label."""

from __future__ import annotations

from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.cli.demo import demo_rules
from gpuledger.sim.fleets import TENANTS


def test_a_demo_pod_without_its_team_label_is_still_its_teams_tenant() -> None:
    rules = demo_rules()
    for namespace, team, _, _ in TENANTS:
        assert rules.resolve(namespace, {}) == rules.resolve(namespace, {"team": team}) == team
    # Without them the namespace fallback makes a second tenant of one team (the issue-19 demo symptom).
    assert TenancyRules().resolve("team-nlp", {}) == "team-nlp" != TenancyRules().resolve("team-nlp", {"team": "nlp"})
