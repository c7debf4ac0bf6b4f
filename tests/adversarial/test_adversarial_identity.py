"""Who a participant may claim to be, and what it may make the operator mount or run (items 5, 6).

Reserved names: a FedParticipant called ``coordinator-client`` would put its Curve key where the
control link's is (and get ``ctl_*`` powers at the aggregator), ``operator`` would be the
coordinator's administrator, ``server`` the server certificate's CN, ``*`` the store's "everyone".
Refused by the schema (local runner, coordinator), the CRD (CEL, API servers >= 1.25), the operator
(legacy API servers) and the aggregator's ``ctl_allow``.

References: ``promptRef`` / ``dataRef`` / ``database.secretRef`` only to objects labelled
``fedattn.io/private-data=true`` and never to the operator's own (a session's CA key); images only
as the chart's ``imagePolicy`` allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kmock
import pytest

from fedattn import pki
from fedattn.api import apply_defaults_and_validate, crds
from fedattn.api.schema import RESERVED_NAMES
from fedattn.api.validation import ManifestError
from fedattn.operator.trust import ImagePolicy
from fedattn.runner import local
from fedattn.runner.manifests import load as load_bundle
from operator_cluster import (
    NAMESPACE,
    ApiServer,
    RecordedStatus,
    declare,
    eventually,
    names_of,
    running_operator,
    seeded,
    stored,
)
from test_aggregator_server import CONTROL_IDENTITY, ctl
from test_coordinator_api import as_, manifests

SESSIONS = "fedattn.io/v1alpha1/fedsessions"
PARTICIPANTS = "fedattn.io/v1alpha1/fedparticipants"
SECRETS, CONFIGMAPS, JOBS = "v1/secrets", "v1/configmaps", "batch/v1/jobs"
DIGEST = "sha256:" + "ab" * 32


def participant(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "fedattn.io/v1alpha1", "kind": "FedParticipant", "metadata": {"name": name}, "spec": spec}


# --- item 5: reserved names -----------------------------------------------------------------------


@pytest.mark.parametrize("name", [*RESERVED_NAMES, "*", "Operator", "a.b"])
def test_reserved_and_malformed_participant_names_are_refused_by_the_schema(name):
    with pytest.raises(ManifestError) as refused:
        apply_defaults_and_validate("FedParticipant", participant(name, sessionRef="s"))
    assert "metadata.name" in str(refused.value) and repr(name) in str(refused.value)


def test_the_crd_refuses_reserved_names_at_admission_and_the_legacy_crd_leaves_it_to_the_operator():
    kind = crds.kinds()["FedParticipant"]
    rules = crds.build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert any("self.metadata.name" in r["rule"] and "coordinator-client" in r["rule"] for r in rules)
    legacy = crds.build_crd(kind, legacy=True)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "x-kubernetes-validations" not in legacy


async def test_the_coordinator_refuses_a_participant_named_after_a_component(stack):
    operator = as_(stack.running, stack.pki_dir, "operator")
    for name in RESERVED_NAMES:
        body = manifests("r")
        body["participants"][0]["metadata"]["name"] = name
        status, reply = await operator.call("POST", "/v1/sessions", body)
        assert status == 422 and "is reserved" in reply["message"], (name, status, reply)
    assert (await operator.call("GET", "/v1/sessions/r"))[0] == 404


def test_the_aggregator_refuses_ctl_allow_for_a_reserved_identity(agg):
    coord = agg.client(CONTROL_IDENTITY)
    for name in RESERVED_NAMES:
        reply = ctl(
            coord, agg.events, "ctl_allow", meta={"participant": name, "public_key": pki.curve_keypair().public}
        )
        assert not reply["ok"] and "reserved" in reply["error"], reply
    assert ctl(coord, agg.events, "ctl_status")["ok"]  # the control link itself is untouched


# --- operator: names, private data, images --------------------------------------------------------


@pytest.fixture
async def api():
    async with ApiServer() as emulator, kmock.Server(emulator) as server:
        declare(emulator)
        yield emulator, str(server.url)


def _status(emulator: ApiServer, path: str, name: str) -> dict[str, Any]:
    return (stored(emulator, path, name) or {}).get("status") or {}


def _learning(name: str = "lrn", **spec: Any) -> dict[str, Any]:
    return seeded("FedSession", name, {"mode": "learning", "minParticipants": 1, **spec})


def _data(kind: str, name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = {"name": name, "namespace": NAMESPACE, "labels": labels or {}}
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, "data": {"k": "eA=="}}


OPTED_IN = {"fedattn.io/private-data": "true"}


async def _failed_reason(emulator, path: str, name: str) -> str:
    """``reason: message`` of the condition that says why the object failed."""
    await eventually(lambda: _status(emulator, path, name).get("phase") == "Failed")
    kind = "Failed" if path == SESSIONS else "CertificateIssued"
    cond = next(c for c in _status(emulator, path, name)["conditions"] if c["type"] == kind)
    return f"{cond['reason']}: {cond['message']}"


async def test_the_operator_gives_no_credentials_to_a_reserved_name(api):
    emulator, url = api
    async with running_operator(url, RecordedStatus()) as config:
        await config.kube.apply(_learning())
        await eventually(lambda: "coordinator-client.curve.pub" in (_allow(emulator) or {}))
        control_key = _allow(emulator)["coordinator-client.curve.pub"]
        await config.kube.apply(seeded("FedParticipant", "coordinator-client", {"sessionRef": "lrn"}))
        reason = await _failed_reason(emulator, PARTICIPANTS, "coordinator-client")
    assert reason.startswith("InvalidSpec") and "is reserved" in reason
    assert _allow(emulator)["coordinator-client.curve.pub"] == control_key
    assert "coordinator-client-credentials" not in names_of(emulator, SECRETS)


def _allow(emulator) -> dict[str, str] | None:
    obj = stored(emulator, CONFIGMAPS, "lrn-allow")
    return None if obj is None else obj.get("data") or {}


async def test_private_data_refs_need_the_opt_in_label_and_never_the_operators_objects(api):
    emulator, url = api
    async with running_operator(url, RecordedStatus()) as config:
        for obj in (
            _learning(),
            _data("ConfigMap", "unlabelled"),
            _data("Secret", "labelled", labels=OPTED_IN),
        ):
            await config.kube.apply(obj)
        await eventually(lambda: "lrn-ca" in names_of(emulator, SECRETS))
        # even labelled, the session CA's Secret is the operator's own
        await config.kube.patch(
            kind="Secret", namespace=NAMESPACE, name="lrn-ca", body={"metadata": {"labels": OPTED_IN}}
        )
        refs = {
            "steal-ca": {"secretKeyRef": {"name": "lrn-ca", "key": "ca.key"}},
            "unasked": {"configMapKeyRef": {"name": "unlabelled", "key": "k"}},
            "honest": {"secretKeyRef": {"name": "labelled", "key": "k"}},
        }
        for name, ref in refs.items():
            await config.kube.apply(seeded("FedParticipant", name, {"sessionRef": "lrn", "dataRef": ref}))
        await eventually(lambda: _status(emulator, PARTICIPANTS, "honest").get("phase") == "Credentialed")
        steal = await _failed_reason(emulator, PARTICIPANTS, "steal-ca")
        unasked = await _failed_reason(emulator, PARTICIPANTS, "unasked")
    assert steal.startswith("NotAllowed") and "belongs to the operator" in steal
    assert unasked.startswith("NotAllowed") and "fedattn.io/private-data=true" in unasked
    assert names_of(emulator, JOBS) == {"honest-participant"}
    assert {"steal-ca-credentials", "unasked-credentials"}.isdisjoint(names_of(emulator, SECRETS))


async def test_a_database_secret_needs_the_opt_in_label(api):
    emulator, url = api
    async with running_operator(url, RecordedStatus()) as config:
        await config.kube.apply(_data("Secret", "someone-elses", labels={}))
        await config.kube.apply(_learning(database={"secretRef": {"name": "someone-elses"}}))
        reason = await _failed_reason(emulator, SESSIONS, "lrn")
    assert reason.startswith("NotAllowed") and "spec.database.secretRef" in reason
    assert names_of(emulator, "apps/v1/deployments") == set()


async def test_images_other_than_the_operators_follow_the_image_policy(api):
    emulator, url = api
    async with running_operator(url, RecordedStatus()) as config:
        config.image_policy = ImagePolicy(allowed_prefixes=("registry.example/fl/",), require_digest=True)
        await config.kube.apply(_learning())
        images = {
            "foreign": "evil.example/miner:latest",
            "unpinned": "registry.example/fl/trainer:1",
            "pinned": f"registry.example/fl/trainer@{DIGEST}",
        }
        for name, image in images.items():
            await config.kube.apply(seeded("FedParticipant", name, {"sessionRef": "lrn", "image": image}))
        await eventually(lambda: _status(emulator, PARTICIPANTS, "pinned").get("phase") == "Credentialed")
        foreign = await _failed_reason(emulator, PARTICIPANTS, "foreign")
        unpinned = await _failed_reason(emulator, PARTICIPANTS, "unpinned")
    assert foreign.startswith("NotAllowed") and "imagePolicy" in foreign
    assert unpinned.startswith("NotAllowed") and "digest" in unpinned
    assert names_of(emulator, JOBS) == {"pinned-participant"}


def test_the_default_image_policy_allows_only_the_operators_images():
    policy = ImagePolicy()
    own = {"fedattn-participant:1"}
    assert policy.problem("fedattn-participant:1", where="spec.image", own=own) is None
    assert policy.problem("", where="spec.image", own=own) is None
    assert "not allowed" in policy.problem("fedattn-participant:2", where="spec.image", own=own)
    assert ImagePolicy.from_env(
        {"FEDATTN_IMAGE_ALLOWED_PREFIXES": "a/, b/", "FEDATTN_IMAGE_REQUIRE_DIGEST": "true"}
    ) == (ImagePolicy(allowed_prefixes=("a/", "b/"), require_digest=True))


# --- local mode: each participant process sees its own keys only ------------------------------------


def test_local_mode_keeps_the_ca_key_nowhere_and_each_participant_gets_only_its_own_keys(tmp_path):
    bundle = load_bundle(Path(__file__).parents[2] / "examples" / "learning-digits.yaml")
    prepared = local.prepare(bundle, workdir=tmp_path)
    assert not list(tmp_path.rglob("ca.key"))
    for name in bundle.participant_names:
        own = local.participant_pki_dir(tmp_path, name)
        assert sorted(p.name for p in own.iterdir()) == sorted(
            ["ca.crt", f"{name}.crt", f"{name}.key", f"{name}.curve.pub", f"{name}.curve.sec"]
        )
        assert own.stat().st_mode & 0o077 == 0
        assert prepared.identities[name].root == own
    shared = {p.name for p in (tmp_path / "pki").iterdir() if p.is_file()}
    assert not any(n.startswith(tuple(bundle.participant_names)) for n in shared)


async def test_volumes_follow_the_same_rules_and_host_paths_are_refused(api):
    emulator, url = api
    async with running_operator(url, RecordedStatus()) as config:
        for obj in (_learning(), _data("Secret", "labelled", labels=OPTED_IN)):
            await config.kube.apply(obj)
        await eventually(lambda: "lrn-ca" in names_of(emulator, SECRETS))
        volumes = {
            "node": [{"name": "root", "hostPath": {"path": "/"}}],
            "ca": [{"name": "ca", "projected": {"sources": [{"secret": {"name": "lrn-ca"}}]}}],
            "fine": [{"name": "data", "secret": {"secretName": "labelled"}}, {"name": "tmp", "emptyDir": {}}],
        }
        for name, vols in volumes.items():
            mounts = [{"name": v["name"], "mountPath": f"/mnt/{v['name']}"} for v in vols]
            spec = {"sessionRef": "lrn", "volumes": vols, "volumeMounts": mounts}
            await config.kube.apply(seeded("FedParticipant", name, spec))
        await eventually(lambda: _status(emulator, PARTICIPANTS, "fine").get("phase") == "Credentialed")
        node = await _failed_reason(emulator, PARTICIPANTS, "node")
        ca = await _failed_reason(emulator, PARTICIPANTS, "ca")
    assert node.startswith("NotAllowed") and "hostPath" in node
    assert ca.startswith("NotAllowed") and "belongs to the operator" in ca
    assert names_of(emulator, JOBS) == {"fine-participant"}
