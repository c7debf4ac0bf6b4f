"""Sessions in real pods: the chart's operator pod creates coordinator, aggregator and participant pods
from the node's locally built images, and the examples run to ``Succeeded``.

Each test records its wall time and acknowledged-vs-stored contributions in the node's
``scenarios.tsv`` (printed too), the table the pod suite reports.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import helm_sdkpy
import pytest
from in_pods import delete_session, example, record, run_session
from node import Node
from release import Release


def test_helm_test_passes_against_the_operator_pod(node: Node, pod_release: Release) -> None:
    config = helm_sdkpy.Configuration(namespace=pod_release.namespace, kubeconfig=str(node.admin_kubeconfig))
    result = asyncio.run(helm_sdkpy.ReleaseTest(config).run(pod_release.name))
    hooks = result.get("hooks") or []
    tests = {h["name"]: (h.get("last_run") or {}).get("phase") for h in hooks if "test" in h["events"]}
    assert tests, f"helm test ran no test hook: {result.get('hooks')}"
    assert set(tests.values()) == {"Succeeded"}, tests


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("learning-digits.yaml", "rounds"),
        ("learning-dp.yaml", "privacy"),
        ("attention-smollm2.yaml", "syncs"),
    ],
)
def test_example_succeeds_in_pods(node: Node, pod_release: Release, name: str, check: str) -> None:
    docs = example(name)
    api = node.client()
    outcome = run_session(api, docs=docs, namespace=pod_release.namespace, timeout_s=900)
    try:
        record(outcome, scenario=f"{name} in pods", log=Path(node.workdir) / "scenarios.tsv")
        assert outcome.phase == "Succeeded", outcome.status
        assert outcome.condition("Complete").get("status") == "True", outcome.status
        assert set(outcome.phases().values()) == {"Done"}, outcome.phases()
        if check == "syncs":
            assert outcome.status["syncs"] > 0, outcome.status
        else:
            assert outcome.status["round"] >= 1, outcome.status
            assert outcome.acknowledged > 0, outcome
            assert outcome.stored == outcome.acknowledged, outcome
    finally:
        delete_session(api, docs=docs, namespace=pod_release.namespace)
