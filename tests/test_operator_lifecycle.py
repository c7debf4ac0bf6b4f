"""The operator end to end on an emulated API server: real kopf machinery, real HTTP, real PKI.

The coordinator's status comes from a recorded provider (the test sets what the coordinator says);
the Kubernetes API is kmock's emulator with the few behaviours kopf needs (tests/operator_cluster.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from typing import Any

import kmock
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedattn import pki
from fedattn.operator import rbac
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

SESSIONS = "fedattn.io/v1alpha1/fedsessions"
PARTICIPANTS = "fedattn.io/v1alpha1/fedparticipants"
SECRETS, CONFIGMAPS, SERVICES = "v1/secrets", "v1/configmaps", "v1/services"
DEPLOYMENTS, JOBS, EVENTS = "apps/v1/deployments", "batch/v1/jobs", "v1/events"


@pytest.fixture
async def api():
    async with ApiServer() as emulator, kmock.Server(emulator) as server:
        declare(emulator)
        yield emulator, str(server.url)


def _attention_session(name: str = "qa", **spec: Any) -> dict[str, Any]:
    return seeded("FedSession", name, {"mode": "attention", "publisher": "asker", "minParticipants": 3, **spec})


def _participants(session: str = "qa") -> list[dict[str, Any]]:
    return [
        seeded(
            "FedParticipant",
            "holder-a",
            {
                "sessionRef": session,
                "node": {"zone": "a"},
                "promptRef": {"configMapKeyRef": {"name": "doc-a", "key": "prompt"}},
            },
        ),
        seeded(
            "FedParticipant",
            "holder-b",
            {"sessionRef": session, "promptRef": {"secretKeyRef": {"name": "doc-b", "key": "text"}}},
        ),
        seeded("FedParticipant", "asker", {"sessionRef": session, "external": True}),
    ]


def _private_data() -> list[dict[str, Any]]:
    """The prompts ``_participants`` mount, labelled so FedParticipants may use them (operator.trust)."""
    meta = {"namespace": NAMESPACE, "labels": {"fedattn.io/private-data": "true"}}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "doc-a", **meta}, "data": {"prompt": "a"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "doc-b", **meta}, "data": {"text": "Yg=="}},
    ]


def _secret(emulator: ApiServer, name: str) -> dict[str, bytes]:
    obj = stored(emulator, SECRETS, name)
    assert obj is not None, f"no Secret {name}"
    return {k: base64.b64decode(v) for k, v in obj["data"].items()}


def _owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    refs = obj["metadata"].get("ownerReferences", [])
    return any(
        r["uid"] == owner["metadata"]["uid"] and r["kind"] == owner["kind"] and r.get("controller") for r in refs
    )


def _status(emulator: ApiServer, path: str, name: str) -> dict[str, Any]:
    obj = stored(emulator, path, name)
    return (obj or {}).get("status") or {}


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def _running(joined: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "qa",
        "mode": "attention",
        "phase": "Running",
        "round": 2,
        "message": "syncing",
        "started_at": 1_700_000_000.0,
        "participants": {"joined": joined, "ready": joined, "total": 3},
        "participant_status": {},
        "syncs": 4,
        "avg_sync_latency_ms": 12.5,
        **extra,
    }


async def _create_all(config, objs: list[dict[str, Any]]) -> None:
    for obj in objs:
        await config.kube.apply(obj)


async def test_session_with_three_participants_gets_every_child(api) -> None:
    emulator, url = api
    recorded = RecordedStatus()
    session, members = _attention_session(), _participants()
    async with running_operator(url, recorded) as config:
        await _create_all(config, [*_private_data(), session, *members])
        await eventually(
            lambda: (
                _status(emulator, PARTICIPANTS, "asker").get("phase") == "Credentialed"
                and _status(emulator, PARTICIPANTS, "holder-b").get("phase") == "Credentialed"
                and _status(emulator, PARTICIPANTS, "holder-a").get("phase") == "Credentialed"
            )
        )
        await eventually(
            lambda: (
                _status(emulator, SESSIONS, "qa").get("phase") == "Pending"
                and _cond(_status(emulator, SESSIONS, "qa"), "CertificatesReady")["status"] == "True"
                and _status(emulator, SESSIONS, "qa")["participants"]["total"] == 3
            )
        )

    assert names_of(emulator, DEPLOYMENTS) == {"qa-coordinator", "qa-aggregator"}
    assert names_of(emulator, SERVICES) == {"qa-coordinator", "qa-aggregator"}
    assert names_of(emulator, JOBS) == {"holder-a-participant", "holder-b-participant"}  # asker is external
    assert {
        "qa-ca",
        "qa-curve",
        "qa-server-tls",
        "qa-operator-client",
        "holder-a-credentials",
        "holder-b-credentials",
        "asker-credentials",
    } <= names_of(emulator, SECRETS)

    for path, name in [
        (DEPLOYMENTS, "qa-coordinator"),
        (DEPLOYMENTS, "qa-aggregator"),
        (SERVICES, "qa-coordinator"),
        (SECRETS, "qa-ca"),
        (SECRETS, "qa-curve"),
        (CONFIGMAPS, "qa-allow"),
    ]:
        assert _owned_by(stored(emulator, path, name), session), (path, name)
    for member in members:
        assert _owned_by(stored(emulator, SECRETS, f"{member['metadata']['name']}-credentials"), member)
    assert _owned_by(stored(emulator, JOBS, "holder-a-participant"), members[0])

    # The server certificate chains to the session CA and names the coordinator's Service.
    ca = x509.load_pem_x509_certificate(_secret(emulator, "qa-ca")["ca.crt"])
    server = x509.load_pem_x509_certificate(_secret(emulator, "qa-server-tls")["server.crt"])
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm))
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert "qa-coordinator.default.svc" in sans
    creds = _secret(emulator, "holder-a-credentials")
    assert pki.common_name(creds["holder-a.crt"]) == "holder-a"
    assert set(creds) == {"ca.crt", "holder-a.crt", "holder-a.key", "holder-a.curve.pub", "holder-a.curve.sec"}

    # The allowlist holds exactly the PUBLIC Curve keys of the control link and every participant.
    allow = stored(emulator, CONFIGMAPS, "qa-allow")["data"]
    assert set(allow) == {"coordinator-client.curve.pub", "holder-a.curve.pub", "holder-b.curve.pub", "asker.curve.pub"}
    for name in ("holder-a", "holder-b", "asker"):
        assert allow[f"{name}.curve.pub"].encode() == _secret(emulator, f"{name}-credentials")[f"{name}.curve.pub"]
    assert not any(
        _secret(emulator, f"{n}-credentials")[f"{n}.curve.sec"].decode() in allow.values()
        for n in ("holder-a", "holder-b", "asker")
    )

    # The in-cluster Job: pinned by spec.node, its own credentials and only its own private prompt.
    pod = stored(emulator, JOBS, "holder-a-participant")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"zone": "a"}
    container = pod["containers"][0]
    assert container["args"][:3] == ["participant", "--coordinator", "https://qa-coordinator.default.svc:8443"]
    assert container["args"][container["args"].index("--prompt-file") + 1] == "/etc/fedattn/private/prompt"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["pki"]["secret"]["secretName"] == "holder-a-credentials"
    assert volumes["private-prompt"]["configMap"] == {"name": "doc-a", "items": [{"key": "prompt", "path": "prompt"}]}
    b_pod = stored(emulator, JOBS, "holder-b-participant")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in b_pod["volumes"]}["private-prompt"]["secret"]["secretName"] == "doc-b"

    status = _status(emulator, SESSIONS, "qa")
    assert _cond(status, "CertificatesReady")["status"] == "True"
    assert _cond(status, "Ready")["status"] == "False"  # kstatus: not until it has succeeded
    assert _cond(status, "Reconciling")["reason"] == "WaitingForParticipants"
    assert status["observedGeneration"] == 1  # written by reconcile, which acted on generation 1
    assert status["participants"]["total"] == 3
    assert _cond(_status(emulator, PARTICIPANTS, "asker"), "CertificateIssued")["status"] == "True"


async def test_status_follows_the_coordinator_and_emits_events(api) -> None:
    emulator, url = api
    recorded = RecordedStatus()
    async with running_operator(url, recorded) as config:
        await _create_all(config, [*_private_data(), _attention_session(), *_participants()])
        await eventually(
            lambda: (
                _status(emulator, SESSIONS, "qa").get("phase") == "Pending"
                and _status(emulator, PARTICIPANTS, "asker").get("phase") == "Credentialed"
            )
        )
        recorded.statuses["qa"] = _running(
            2,
            participant_status={
                "asker": {
                    "phase": "Contributing",
                    "last_heartbeat": 1_700_000_100.0,
                    "contributions": 3,
                    "last_latency_ms": 8.0,
                }
            },
        )
        await eventually(lambda: _status(emulator, SESSIONS, "qa").get("phase") == "Running")
        status = _status(emulator, SESSIONS, "qa")
        assert (status["round"], status["syncs"], status["avgSyncLatencyMs"]) == (2, 4, 12.5)
        assert (_cond(status, "Ready")["status"], _cond(status, "Ready")["reason"]) == ("False", "RoundInProgress")
        assert _cond(status, "Reconciling")["status"] == "True"
        assert _cond(status, "QuorumReached")["status"] == "False"  # 2 of minParticipants=3
        assert status["startedAt"] == "2023-11-14T22:13:20Z"
        asker = await eventually(
            lambda: (
                _status(emulator, PARTICIPANTS, "asker").get("contributions") == 3
                and _status(emulator, PARTICIPANTS, "asker")
            )
        )
        assert asker["phase"] == "Contributing" and asker["lastHeartbeat"] == "2023-11-14T22:15:00Z"
        assert _cond(asker, "Connected")["status"] == "True"

        recorded.statuses["qa"] = _running(3)
        await eventually(lambda: _cond(_status(emulator, SESSIONS, "qa"), "QuorumReached")["status"] == "True")
        recorded.statuses["qa"] = _running(3, phase="Succeeded", completed_at=1_700_000_600.0, message="done")
        await eventually(lambda: _status(emulator, SESSIONS, "qa").get("phase") == "Succeeded")
        status = _status(emulator, SESSIONS, "qa")
        assert _cond(status, "Complete")["status"] == "True" and _cond(status, "Reconciling")["status"] == "False"
        assert _cond(status, "Ready")["status"] == "True"
        assert status["completedAt"] == "2023-11-14T22:23:20Z"
        calls = len(recorded.calls)
        recorded.statuses["qa"] = _running(3)  # a terminal phase is sticky: the coordinator is not asked again
        await asyncio.sleep(config.poll_seconds * 5)  # several more progress passes
        assert _status(emulator, SESSIONS, "qa")["phase"] == "Succeeded" and len(recorded.calls) == calls

    events = [e for e in (stored(emulator, EVENTS, n) for n in names_of(emulator, EVENTS)) if e]
    assert {"Running", "Succeeded"} <= {e.get("reason") for e in events}  # kopf posts them asynchronously
    assert [e["reason"] for e in events if e.get("type") == "Warning"] == []  # a success is no bad news


async def test_suspend_scales_down_and_resume_scales_up(api) -> None:
    emulator, url = api
    jobs = {"holder-a-participant", "holder-b-participant"}
    async with running_operator(url, RecordedStatus({"qa": _running(3)})) as config:
        await _create_all(config, [*_private_data(), _attention_session(), *_participants()])
        await eventually(lambda: _status(emulator, SESSIONS, "qa").get("phase") == "Running")
        await eventually(lambda: names_of(emulator, DEPLOYMENTS) == {"qa-coordinator", "qa-aggregator"})
        await eventually(
            lambda: (
                names_of(emulator, JOBS) == jobs
                and _status(emulator, PARTICIPANTS, "holder-b").get("phase") == "Credentialed"
            )
        )

        def replicas() -> set[int]:
            return {stored(emulator, DEPLOYMENTS, n)["spec"]["replicas"] for n in ("qa-coordinator", "qa-aggregator")}

        assert replicas() == {1}
        await config.kube.patch(
            kind="FedSession",
            namespace=NAMESPACE,
            name="qa",
            body={"spec": {"suspend": True}, "metadata": {"generation": 2}},
        )
        await eventually(lambda: replicas() == {0} and _status(emulator, SESSIONS, "qa").get("phase") == "Suspended")
        assert _cond(_status(emulator, SESSIONS, "qa"), "Ready")["reason"] == "Suspended"
        await eventually(lambda: names_of(emulator, JOBS) == set())  # no Job burns its retries meanwhile
        await config.kube.patch(
            kind="FedSession",
            namespace=NAMESPACE,
            name="qa",
            body={"spec": {"suspend": False}, "metadata": {"generation": 3}},
        )
        await eventually(lambda: replicas() == {1} and _status(emulator, SESSIONS, "qa").get("phase") == "Running")
        await eventually(lambda: names_of(emulator, JOBS) == jobs)
    assert _owned_by(stored(emulator, JOBS, "holder-a-participant"), stored(emulator, PARTICIPANTS, "holder-a"))


async def test_active_deadline_fails_the_session_and_scales_it_down(api) -> None:
    emulator, url = api
    clock = {"now": dt.datetime.now(dt.UTC)}
    session = seeded("FedSession", "late", {"mode": "learning", "activeDeadlineSeconds": 60})
    recorded = RecordedStatus({"late": _running(3)})
    async with running_operator(url, recorded, clock=lambda: clock["now"]) as config:
        await _create_all(config, [session])
        await eventually(lambda: _status(emulator, SESSIONS, "late").get("phase") == "Running")
        await eventually(lambda: stored(emulator, DEPLOYMENTS, "late-coordinator")["spec"]["replicas"] == 1)
        clock["now"] += dt.timedelta(seconds=61)
        await eventually(lambda: _status(emulator, SESSIONS, "late").get("phase") == "Failed")
        await eventually(lambda: stored(emulator, DEPLOYMENTS, "late-coordinator")["spec"]["replicas"] == 0)
        calls = len(recorded.calls)
        await asyncio.sleep(config.poll_seconds * 5)
        assert len(recorded.calls) == calls  # past its deadline, nobody asks the coordinator
    failed = _cond(_status(emulator, SESSIONS, "late"), "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded")
    assert stored(emulator, DEPLOYMENTS, "late-aggregator")["spec"]["replicas"] == 0


async def test_a_session_past_its_deadline_is_never_started(api) -> None:
    emulator, url = api
    session = seeded("FedSession", "stale", {"mode": "learning", "activeDeadlineSeconds": 60}, age_seconds=120)
    async with running_operator(url, RecordedStatus({"stale": _running(3)})) as config:
        await _create_all(config, [session])
        await eventually(lambda: _status(emulator, SESSIONS, "stale").get("phase") == "Failed")
    assert names_of(emulator, DEPLOYMENTS) == set()
    assert _cond(_status(emulator, SESSIONS, "stale"), "Failed")["reason"] == "DeadlineExceeded"


async def test_ttl_after_finished_deletes_the_session(api) -> None:
    emulator, url = api
    session = seeded("FedSession", "brief", {"mode": "learning", "ttlSecondsAfterFinished": 0})
    async with running_operator(url, RecordedStatus({"brief": {**_running(2), "phase": "Succeeded"}})) as config:
        await _create_all(config, [session])
        await eventually(lambda: stored(emulator, SESSIONS, "brief") is None)


async def test_deleting_a_participant_revokes_its_credentials(api) -> None:
    emulator, url = api
    recorded = RecordedStatus()
    async with running_operator(url, recorded) as config:
        await _create_all(config, [*_private_data(), _attention_session(), *_participants()])
        await eventually(lambda: "holder-b.curve.pub" in stored(emulator, CONFIGMAPS, "qa-allow")["data"])
        await config.kube.delete(kind="FedParticipant", namespace=NAMESPACE, name="holder-b")
        await eventually(lambda: stored(emulator, PARTICIPANTS, "holder-b") is None)
    assert recorded.evictions == [("qa", "holder-b")]  # the coordinator revokes its key at once
    assert "holder-b.curve.pub" not in stored(emulator, CONFIGMAPS, "qa-allow")["data"]
    assert stored(emulator, SECRETS, "holder-b-credentials") is None
    assert stored(emulator, JOBS, "holder-b-participant") is None
    assert "holder-a.curve.pub" in stored(emulator, CONFIGMAPS, "qa-allow")["data"]  # the others are untouched
    assert stored(emulator, SECRETS, "holder-a-credentials") is not None


async def test_eviction_by_the_coordinator_revokes_credentials(api) -> None:
    emulator, url = api
    recorded = RecordedStatus()
    async with running_operator(url, recorded) as config:
        await _create_all(config, [*_private_data(), _attention_session(), *_participants()])
        await eventually(lambda: _status(emulator, PARTICIPANTS, "holder-a").get("phase") == "Credentialed")
        recorded.statuses["qa"] = _running(3, participant_status={"holder-a": {"phase": "Evicted"}})
        await eventually(lambda: _status(emulator, PARTICIPANTS, "holder-a").get("phase") == "Evicted")
        await eventually(lambda: stored(emulator, SECRETS, "holder-a-credentials") is None)
        assert _cond(_status(emulator, PARTICIPANTS, "holder-a"), "CertificateIssued")["reason"] == "Revoked"
        assert "holder-a.curve.pub" not in stored(emulator, CONFIGMAPS, "qa-allow")["data"]
        degraded = await eventually(lambda: _cond(_status(emulator, SESSIONS, "qa"), "Degraded"))
        assert degraded["status"] == "True" and "holder-a" in degraded["message"]


async def test_deleting_a_session_completes(api) -> None:
    emulator, url = api
    async with running_operator(url, RecordedStatus()) as config:
        await _create_all(config, [_attention_session()])
        await eventually(lambda: stored(emulator, DEPLOYMENTS, "qa-coordinator"))
        await config.kube.delete(kind="FedSession", namespace=NAMESPACE, name="qa")
        # kopf stops the progress daemon and releases its finalizer; children go with the owner (GC)
        await eventually(lambda: stored(emulator, SESSIONS, "qa") is None)


async def test_invalid_spec_is_failed_without_children(api) -> None:
    emulator, url = api
    bad = seeded("FedSession", "bad", {"mode": "attention", "strategy": {"name": "krum", "params": {"proximalMu": 1}}})
    async with running_operator(url, RecordedStatus()) as config:
        await _create_all(config, [bad])
        await eventually(lambda: _status(emulator, SESSIONS, "bad").get("phase") == "Failed")
    failed = _cond(_status(emulator, SESSIONS, "bad"), "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec: publisher is required in attention mode" in failed["message"]
    assert "spec.strategy: strategy.params has a key this strategy does not take" in failed["message"]
    assert names_of(emulator, DEPLOYMENTS) == set() and names_of(emulator, SECRETS) == set()


async def test_certificates_close_to_expiry_are_renewed(api) -> None:
    emulator, url = api
    real = dt.datetime.now(dt.UTC)
    clock = {"now": real}
    renewing = [("server", "qa-server-tls"), ("operator", "qa-operator-client"), ("holder-a", "holder-a-credentials")]
    async with running_operator(url, RecordedStatus(), clock=lambda: clock["now"], renew_check_seconds=0) as config:
        await _create_all(config, [*_private_data(), _attention_session(), *_participants()])
        await eventually(lambda: _status(emulator, PARTICIPANTS, "holder-a").get("phase") == "Credentialed")
        before = {n: _secret(emulator, s)[f"{n}.crt"] for n, s in renewing}
        curve_before = _secret(emulator, "holder-a-credentials")["holder-a.curve.sec"]
        await asyncio.sleep(config.poll_seconds * 5)  # not due yet: nothing is reissued
        assert {n: _secret(emulator, s)[f"{n}.crt"] for n, s in renewing} == before
        clock["now"] = real + dt.timedelta(days=340)  # validity 365 days, renew 30 days before
        await eventually(lambda: all(_secret(emulator, s)[f"{n}.crt"] != before[n] for n, s in renewing))
        clock["now"] = real
    ca = x509.load_pem_x509_certificate(_secret(emulator, "qa-ca")["ca.crt"])
    for name, secret in renewing:
        files = _secret(emulator, secret)
        cert = x509.load_pem_x509_certificate(files[f"{name}.crt"])
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        assert pki.common_name(files[f"{name}.crt"]) == name
        assert pki.not_after(files[f"{name}.crt"]) - real > dt.timedelta(days=360)  # the CA outlives its leaves
    assert _secret(emulator, "holder-a-credentials")["holder-a.curve.sec"] == curve_before  # Curve key kept
    assert set(_secret(emulator, "holder-a-credentials")) == {
        "ca.crt",
        "holder-a.crt",
        "holder-a.key",
        "holder-a.curve.pub",
        "holder-a.curve.sec",
    }


async def test_every_api_call_is_covered_by_the_role(api) -> None:
    emulator, url = api
    recorded = RecordedStatus()
    async with running_operator(url, recorded) as config:
        await _create_all(config, [*_private_data(), _attention_session(ttlSecondsAfterFinished=0), *_participants()])
        await eventually(lambda: _status(emulator, PARTICIPANTS, "holder-a").get("phase") == "Credentialed")
        recorded.statuses["qa"] = _running(3, participant_status={"holder-b": {"phase": "Evicted"}})
        await eventually(lambda: _status(emulator, PARTICIPANTS, "holder-b").get("phase") == "Evicted")
        await config.kube.patch(
            kind="FedSession",
            namespace=NAMESPACE,
            name="qa",
            body={"spec": {"suspend": True}, "metadata": {"generation": 2}},
        )
        await eventually(lambda: _status(emulator, SESSIONS, "qa").get("phase") == "Suspended")
        await config.kube.delete(kind="FedParticipant", namespace=NAMESPACE, name="holder-a")
        await eventually(lambda: stored(emulator, PARTICIPANTS, "holder-a") is None)
        await config.kube.patch(
            kind="FedSession",
            namespace=NAMESPACE,
            name="qa",
            body={"spec": {"suspend": False}, "metadata": {"generation": 3}},
        )
        recorded.statuses["qa"] = {**_running(3), "phase": "Succeeded"}
        await eventually(lambda: stored(emulator, SESSIONS, "qa") is None)  # TTL
    verbs = {
        kmock.action.CREATE: "create",
        kmock.action.UPDATE: "patch",
        kmock.action.FETCH: "get",
        kmock.action.LIST: "list",
        kmock.action.WATCH: "watch",
        kmock.action.DELETE: "delete",
    }
    seen = set()
    for request in list(emulator):
        if request.resource is None or request.resource.plural is None or request.action is None:
            continue  # discovery: granted to everyone by system:discovery
        seen.add((request.resource.group, request.resource.plural, request.subresource, verbs[request.action]))
    test_client = {("fedattn.io", "fedsessions", None, "create"), ("fedattn.io", "fedparticipants", None, "create")}
    missing = [s for s in seen - test_client if not rbac.allows(group=s[0], resource=s[1], subresource=s[2], verb=s[3])]
    assert not missing, f"API calls not covered by operator/fedattn/operator/rbac.yaml: {missing}"
    assert ("", "secrets", None, "delete") in seen and ("fedattn.io", "fedsessions", "status", "patch") in seen


async def test_cert_manager_issues_the_certificates_when_an_issuer_is_named(api) -> None:
    emulator, url = api
    verbs = ["get", "list", "watch", "create", "patch", "delete"]
    emulator.resources["cert-manager.io/v1/certificates"] = kmock.ResourceInfo(
        kind="Certificate", namespaced=True, verbs=verbs
    )
    session = _attention_session(tls={"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}})
    async with running_operator(url, RecordedStatus()) as config:
        await _create_all(config, [*_private_data(), session, *_participants()])
        await eventually(
            lambda: (
                names_of(emulator, "cert-manager.io/v1/certificates")
                == {
                    "qa-server-tls",
                    "qa-operator-client",
                    "holder-a-certificate",
                    "holder-b-certificate",
                    "asker-certificate",
                }
            )
        )
        assert names_of(emulator, DEPLOYMENTS) == set()  # not before cert-manager has issued them
        server = stored(emulator, "cert-manager.io/v1/certificates", "qa-server-tls")["spec"]
        assert server["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        assert "qa-coordinator.default.svc" in server["dnsNames"] and server["secretName"] == "qa-server-tls"
        # cert-manager's part, done by hand: it writes tls.crt / tls.key / ca.crt into the named Secrets
        ca = pki.make_ca("corp")
        for name, cn in [("qa-server-tls", "server"), ("qa-operator-client", "operator")]:
            pair = pki.issue(ca, cn)
            data = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca.cert_pem}
            await config.kube.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
                }
            )
        await eventually(lambda: names_of(emulator, DEPLOYMENTS) == {"qa-coordinator", "qa-aggregator"})
        await eventually(lambda: _cond(_status(emulator, SESSIONS, "qa"), "CertificatesReady")["status"] == "True")
    assert "qa-ca" not in names_of(emulator, SECRETS)  # no CA of our own
    creds = _secret(emulator, "holder-a-credentials")
    assert set(creds) == {"holder-a.curve.pub", "holder-a.curve.sec"}  # only the Curve keys are ours
    pod = stored(emulator, DEPLOYMENTS, "qa-coordinator")["spec"]["template"]["spec"]
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")["projected"]["sources"][0]["secret"]
    assert {i["key"]: i["path"] for i in tls["items"]} == {
        "tls.crt": "server.crt",
        "tls.key": "server.key",
        "ca.crt": "ca.crt",
    }


CLAIMS, BUDGETS = "v1/persistentvolumeclaims", "policy/v1/poddisruptionbudgets"


@pytest.mark.parametrize(
    ("policy", "replicas", "claims_left"),
    [("ScaleDown", 0, True), ("Keep", 1, True), ("Delete", 0, False)],
)
async def test_state_claims_budgets_and_the_clean_up_policy(api, policy: str, replicas: int, claims_left: bool) -> None:
    emulator, url = api
    session = seeded("FedSession", "qa", {"mode": "attention", "publisher": "asker", "cleanupPolicy": policy})
    uid = session["metadata"]["uid"][:8]
    claims = {f"qa-coordinator-state-{uid}", f"qa-aggregator-state-{uid}"}
    recorded = RecordedStatus({"qa": _running(3)})
    async with running_operator(url, recorded) as config:
        await _create_all(config, [session])
        await eventually(lambda: _status(emulator, SESSIONS, "qa").get("phase") == "Running")
        await eventually(lambda: names_of(emulator, CLAIMS) == claims)
        await eventually(lambda: names_of(emulator, BUDGETS) == {"qa-coordinator", "qa-aggregator"})
        for claim in claims:
            assert _owned_by(stored(emulator, CLAIMS, claim), stored(emulator, SESSIONS, "qa"))
        pod = stored(emulator, DEPLOYMENTS, "qa-coordinator")["spec"]["template"]["spec"]
        assert {"persistentVolumeClaim": {"claimName": f"qa-coordinator-state-{uid}"}}.items() <= next(
            v for v in pod["volumes"] if v["name"] == "state"
        ).items()
        recorded.statuses["qa"] = _running(3, phase="Succeeded", completed_at=1_700_000_600.0, message="done")
        await eventually(lambda: _status(emulator, SESSIONS, "qa").get("phase") == "Succeeded")

        def settled() -> bool:
            deployments = {
                stored(emulator, DEPLOYMENTS, n)["spec"]["replicas"] for n in ("qa-coordinator", "qa-aggregator")
            }
            budgets = names_of(emulator, BUDGETS) == (
                {"qa-coordinator", "qa-aggregator"} if policy == "Keep" else set()
            )
            return deployments == {replicas} and budgets and (names_of(emulator, CLAIMS) == claims) == claims_left

        await eventually(settled)


async def test_suspend_drops_the_budgets_and_keeps_the_claims(api) -> None:
    emulator, url = api
    session = seeded("FedSession", "qa", {"mode": "attention", "publisher": "asker"})
    async with running_operator(url, RecordedStatus({"qa": _running(3)})) as config:
        await _create_all(config, [session])
        await eventually(lambda: names_of(emulator, BUDGETS) == {"qa-coordinator", "qa-aggregator"})
        claims = names_of(emulator, CLAIMS)
        await config.kube.patch(
            kind="FedSession",
            namespace=NAMESPACE,
            name="qa",
            body={"spec": {"suspend": True}, "metadata": {"generation": 2}},
        )
        await eventually(lambda: names_of(emulator, BUDGETS) == set() and len(claims) == 2)
        assert names_of(emulator, CLAIMS) == claims  # resume finds the same store and checkpoints


async def test_a_session_deleted_and_applied_again_reissues_its_participants(api) -> None:
    emulator, url = api
    first = _attention_session()
    async with running_operator(url, RecordedStatus()) as config:
        await _create_all(config, [*_private_data(), first, *_participants()])
        await eventually(lambda: names_of(emulator, JOBS) == {"holder-a-participant", "holder-b-participant"})
        await eventually(lambda: _status(emulator, PARTICIPANTS, "asker").get("phase") == "Credentialed")
        await config.kube.delete(kind="FedSession", namespace=NAMESPACE, name="qa")
        await eventually(lambda: stored(emulator, SESSIONS, "qa") is None)
        for path, kind in ((SECRETS, "Secret"), (CONFIGMAPS, "ConfigMap")):  # the garbage collector's part
            for name in names_of(emulator, path):
                if _owned_by(stored(emulator, path, name), first):
                    await config.kube.delete(kind=kind, namespace=NAMESPACE, name=name)
        again = _attention_session()  # same name, new UID
        await _create_all(config, [again])
        uid = again["metadata"]["uid"]

        def reissued(name: str) -> bool:
            secret = stored(emulator, SECRETS, f"{name}-credentials")
            return bool(secret) and secret["metadata"].get("annotations", {}).get("fedattn.io/session-uid") == uid

        await eventually(lambda: all(reissued(n) for n in ("holder-a", "holder-b", "asker")))
        await eventually(
            lambda: stored(emulator, JOBS, "holder-a-participant")["metadata"]["annotations"]["fedattn.io/session-uid"]
            == uid
        )
    ca = x509.load_pem_x509_certificate(_secret(emulator, "qa-ca")["ca.crt"])
    creds = _secret(emulator, "holder-a-credentials")
    assert creds["ca.crt"] == _secret(emulator, "qa-ca")["ca.crt"]
    cert = x509.load_pem_x509_certificate(creds["holder-a.crt"])
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    allow = stored(emulator, CONFIGMAPS, "qa-allow")["data"]
    assert allow["holder-a.curve.pub"].encode() == creds["holder-a.curve.pub"]
