"""Privacy claims one participant could void (items 10, 11).

DP with secure aggregation: the aggregator only sees the unmasked sum, so it cannot clip any one
update, and participants did not clip their own; the epsilon in status would assume a per-member
sensitivity of ``clipNorm`` that nobody enforced. The combination is refused where a spec enters
(schema CEL, hence API server, coordinator, runner) and by the aggregator's own check.
"""

from __future__ import annotations

import pytest

from fedattn.aggregator.strategies import check_learning_spec
from fedattn.api import apply_defaults_and_validate
from fedattn.api.spec import SessionSpec
from fedattn.api.validation import ManifestError
from test_coordinator_api import as_, manifests

SECURE = {"secureAggregation": {"enabled": True}}
COMBINATIONS = {
    "dp": {"privacy": {**SECURE, "dp": {"noiseMultiplier": 1.0, "clipNorm": 1.0}}},
    "clipNorm": {"privacy": SECURE, "updateLimits": {"clipNorm": 1.0}},
}


@pytest.mark.parametrize("extra", COMBINATIONS.values(), ids=COMBINATIONS.keys())
def test_clipping_with_secure_aggregation_is_refused_where_the_spec_enters(extra):
    spec = {"mode": "learning", "minParticipants": 2, **extra}
    with pytest.raises(ManifestError, match="secureAggregation hides each update"):
        apply_defaults_and_validate("FedSession", {"metadata": {"name": "s"}, "spec": spec})
    with pytest.raises(ValueError, match="cannot clip it"):
        check_learning_spec(SessionSpec.from_manifest(spec))


async def test_the_coordinator_refuses_dp_with_secure_aggregation(stack):
    body = manifests("dpsa", **COMBINATIONS["dp"])
    status, reply = await as_(stack.running, stack.pki_dir, "operator").call("POST", "/v1/sessions", body)
    assert status == 422 and "secureAggregation hides each update" in reply["message"], reply
