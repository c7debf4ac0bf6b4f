"""A site outside the cluster joins an in-cluster session through the node ports, and a revoked one is
refused.

The session exposes its coordinator and aggregator as NodePort Services (``spec.expose``) with the
site's view of the node address in the coordinator certificate. The external participant is a plain
``fedattn participant`` process in its own network namespace (outside.py), whose only route is to that
address; its credentials are exported from the Secret the operator issued, as docs/deploy.md tells a
site administrator to do.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import kubernetes
import pytest
from in_pods import component_pods, custom, delete_session, export_credentials, participants_of, read_session
from kube import create_all, dynamic
from node import Node
from outside import NODE_SIDE, Site
from release import Release, wait_for

SESSION = "outside"
COORDINATOR_PORT, AGGREGATOR_PORT = 30443, 30555


def _session() -> dict:
    return {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": "FedSession",
        "metadata": {"name": SESSION},
        "spec": {
            "mode": "learning",
            "minParticipants": 3,
            "rounds": 3,
            "roundTimeoutSeconds": 60,
            "waitAfterMinSeconds": 2,
            "strategy": {"name": "fedavg"},
            "model": {"name": "mlp", "hiddenUnits": 32},
            "training": {"dataset": "digits", "seed": 7, "localEpochs": 1},
            "expose": {
                "type": "NodePort",
                "addresses": [NODE_SIDE],
                "coordinatorNodePort": COORDINATOR_PORT,
                "aggregatorNodePort": AGGREGATOR_PORT,
            },
        },
    }


def _participant(name: str, *, external: bool) -> dict:
    spec = {"sessionRef": SESSION, **({"external": True} if external else {})}
    return {"apiVersion": "fedattn.io/v1alpha1", "kind": "FedParticipant", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def site() -> Iterator[Site]:
    up = Site().up()
    try:
        yield up
    finally:
        up.down()


def _participant_argv(name: str, pki_dir) -> list[str]:
    return [
        sys.executable, "-m", "fedattn.cli", "participant",
        "--coordinator", f"https://{NODE_SIDE}:{COORDINATOR_PORT}",
        "--aggregator", f"tcp://{NODE_SIDE}:{AGGREGATOR_PORT}",
        "--session", SESSION, "--name", name, "--pki-dir", str(pki_dir),
    ]  # fmt: skip


def test_a_participant_outside_the_cluster_joins_through_node_ports(
    node: Node, pod_release: Release, site: Site
) -> None:
    api = node.client()
    ns = pod_release.namespace
    client = dynamic(api)
    started = time.monotonic()
    # NB: every member exists before the operator registers the session at the coordinator (it sends the
    # member list then); the in-cluster pair alone is no quorum, so the session needs far-site to start.
    docs = [
        _session(),
        _participant("far-site", external=True),
        _participant("gone-site", external=True),
        _participant("near-a", external=False),
        _participant("near-b", external=False),
    ]
    create_all(client, docs, namespace=ns)
    try:

        def credentialed() -> bool:
            found = participants_of(api, namespace=ns, session=SESSION)
            statuses = [found.get(n, {}).get("status") or {} for n in ("far-site", "gone-site")]
            return all(st.get("credentialsSecret") for st in statuses)

        wait_for(credentialed, what="credentials of the external participants", timeout_s=120, interval_s=1)
        far = export_credentials(api, namespace=ns, participant="far-site", dest=node.workdir / "far-site")
        gone = export_credentials(api, namespace=ns, participant="gone-site", dest=node.workdir / "gone-site")

        def coordinator_ready() -> bool:
            pods = component_pods(api, namespace=ns, session=SESSION, component="coordinator")
            return any(c.ready for p in pods for c in (p.status.container_statuses or []))

        wait_for(coordinator_ready, what="the coordinator pod to be Ready", timeout_s=300, interval_s=1)

        def session_at_coordinator() -> bool:
            # NB: Ready means the operator read the session back from the coordinator: it exists there.
            status = read_session(api, namespace=ns, name=SESSION).get("status") or {}
            return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))

        wait_for(session_at_coordinator, what="the session to exist at the coordinator", timeout_s=300, interval_s=1)

        # Revoked: deleting the FedParticipant evicts it and removes its allowlist entry and Secret.
        custom(api).delete_namespaced_custom_object("fedattn.io", "v1alpha1", ns, "fedparticipants", "gone-site")
        core = kubernetes.client.CoreV1Api(api)

        def secret_gone() -> bool:
            try:
                core.read_namespaced_secret("gone-site-credentials", ns)
            except kubernetes.client.ApiException as exc:
                return exc.status == 404
            return False

        wait_for(secret_gone, what="the revoked participant's Secret to be removed", timeout_s=60)
        refused = site.popen(_participant_argv("gone-site", gone), log=node.workdir / "gone-site.log")
        assert refused.wait(timeout=120) != 0, "a revoked participant was let in"
        refusal = (node.workdir / "gone-site.log").read_text()

        joined = site.popen(_participant_argv("far-site", far), log=node.workdir / "far-site.log")

        def finished() -> str | None:
            phase = (read_session(api, namespace=ns, name=SESSION).get("status") or {}).get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        phase = wait_for(finished, what="the session to finish", timeout_s=600, interval_s=1)
        try:
            code = joined.wait(timeout=120)
        except subprocess.TimeoutExpired:
            joined.kill()
            code = None
        far_log = (node.workdir / "far-site.log").read_text()
        status = read_session(api, namespace=ns, name=SESSION)["status"]
        far_status = participants_of(api, namespace=ns, session=SESSION)["far-site"].get("status") or {}
        seconds = time.monotonic() - started
        line = f"external site via node ports\t{seconds:.0f} s\t{phase}\tfar-site ack {far_status.get('contributions')}"
        with open(node.workdir / "scenarios.tsv", "a") as out:
            out.write(line + "\n")
        print(line)
        assert phase == "Succeeded", status
        assert code == 0, far_log[-3000:]
        assert far_status.get("phase") == "Done" and far_status.get("contributions", 0) >= 1, far_status
        assert "gone-site" not in participants_of(api, namespace=ns, session=SESSION)
        assert "403 evicted" in refusal, refusal[-2000:]
    finally:
        delete_session(api, docs=docs, namespace=ns)
