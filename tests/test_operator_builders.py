"""Pure builders: a session/participant dict in, Kubernetes objects out; container args accepted by
the components' own argument parsers."""

from __future__ import annotations

import argparse
import base64
import importlib
from pathlib import Path

import pytest
import yaml

from fedattn import pki
from fedattn.api import apply_defaults_and_validate
from fedattn.api.spec import ParticipantSpec, SessionSpec
from fedattn.operator import builders, names

ROOT = Path(__file__).resolve().parent.parent


def _session(**spec) -> dict:
    doc = {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": "FedSession",
        "metadata": {"name": "s1"},
        "spec": {"mode": "learning", **spec},
    }
    out = apply_defaults_and_validate("FedSession", doc)
    out["metadata"].update(namespace="team", uid="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    return {**out, "spec": SessionSpec.from_manifest(out)}


def _participant(**spec) -> dict:
    doc = {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": "FedParticipant",
        "metadata": {"name": "site-a"},
        "spec": {"sessionRef": "s1", **spec},
    }
    out = apply_defaults_and_validate("FedParticipant", doc)
    out["metadata"]["namespace"] = "team"
    return {**out, "spec": ParticipantSpec.from_manifest(out)}


def _container(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def _parse(component: str, args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    importlib.import_module(f"fedattn.{component}.command").configure(parser)
    return parser.parse_args(args)


@pytest.mark.parametrize(
    ("component", "build"),
    [
        ("coordinator", lambda: builders.build_coordinator_deployment(_session())),
        ("aggregator", lambda: builders.build_aggregator_deployment(_session())),
        (
            "participant",
            lambda: builders.build_participant_job(
                _participant(promptRef={"configMapKeyRef": {"name": "doc", "key": "text"}}), _session()
            ),
        ),
    ],
)
def test_container_args_are_accepted_by_the_component_cli(component: str, build) -> None:
    args = _container(build())["args"]
    assert args[0] == component
    parsed = _parse(component, args[1:])
    mounted = {m["mountPath"] for m in _container(build())["volumeMounts"]}
    for value in vars(parsed).values():  # every file argument points into a mounted directory
        if isinstance(value, Path):
            assert any(str(value).startswith(m + "/") or str(value) == m for m in mounted), value


def test_coordinator_deployment() -> None:
    dep = builders.build_coordinator_deployment(
        _session(
            coordinator={
                "nodeSelector": {"pool": "cpu"},
                "resources": {"limits": {"cpu": "1"}},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            },
            database={"secretRef": {"name": "pg", "key": "url"}},
        ),
        image="img:1",
    )
    assert dep["metadata"]["name"] == "s1-coordinator" and dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert c["image"] == "img:1"
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"][0]["key"] == "dedicated"
    assert c["resources"] == {"limits": {"cpu": "1"}}
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # a slow start (numpy/scipy imports on a busy node) is given 3 minutes before liveness counts
    assert c["startupProbe"]["httpGet"] == c["livenessProbe"]["httpGet"]
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 180
    assert {p["name"] for p in c["ports"]} == {"https", "metrics"}
    assert c["env"] == [{"name": "FEDATTN_DATABASE_DSN", "valueFrom": {"secretKeyRef": {"name": "pg", "key": "url"}}}]
    parsed = _parse("coordinator", c["args"][1:])
    assert not any("DATABASE_DSN" in a or "postgresql" in a for a in c["args"])  # env only: never on argv
    assert parsed.api_host == "0.0.0.0" and parsed.aggregator == "tcp://s1-aggregator.team.svc:5555"
    curve = next(v for v in pod["volumes"] if v["name"] == "curve")["secret"]
    assert "server.curve.sec" not in {i["key"] for i in curve["items"]}  # the aggregator's secret half stays out


def test_sqlite_store_without_a_database_and_suspend_scales_to_zero() -> None:
    dep = builders.build_coordinator_deployment(_session(suspend=True))
    assert dep["spec"]["replicas"] == 0
    assert _container(dep)["env"] == [{"name": "FEDATTN_DATABASE_DSN", "value": "sqlite:////var/lib/fedattn/store.sqlite3"}]
    assert builders.build_aggregator_deployment(_session(suspend=True))["spec"]["replicas"] == 0


def test_aggregator_mounts_the_allowlist_configmap() -> None:
    dep = builders.build_aggregator_deployment(_session())
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["allow"] == {"name": "allow", "configMap": {"name": "s1-allow"}}
    assert _parse("aggregator", _container(dep)["args"][1:]).bind == "tcp://0.0.0.0:5555"


def test_aggregator_checkpoints_to_a_writable_mounted_directory() -> None:
    dep = builders.build_aggregator_deployment(_session(checkpoint={"everyRounds": 2}))
    parsed = _parse("aggregator", _container(dep)["args"][1:])
    mounts = {m["mountPath"]: m for m in _container(dep)["volumeMounts"]}
    mount = mounts[str(parsed.checkpoint_dir)]
    assert not mount.get("readOnly")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    claim = {"claimName": "s1-aggregator-state-0f1e2d3c"}
    assert volumes[mount["name"]] == {"name": mount["name"], "persistentVolumeClaim": claim}


def _pod_volume(dep: dict, mount_path: str) -> dict:
    mount = next(m for m in _container(dep)["volumeMounts"] if m["mountPath"] == mount_path)
    return next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])


def test_store_and_checkpoints_are_on_claims_of_this_session_run_by_default() -> None:
    session = _session()
    claims = {c["metadata"]["name"]: c for c in builders.build_state_claims(session)}
    assert set(claims) == {"s1-coordinator-state-0f1e2d3c", "s1-aggregator-state-0f1e2d3c"}
    claim = claims["s1-coordinator-state-0f1e2d3c"]
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    assert claim["metadata"]["labels"]["app.kubernetes.io/instance"] == "s1"
    store = _pod_volume(builders.build_coordinator_deployment(session), names.STATE_DIR)
    assert store["persistentVolumeClaim"] == {"claimName": "s1-coordinator-state-0f1e2d3c"}
    # the same name re-applied is another run (another UID): it must not find the old run's store
    rerun = _session()
    rerun["metadata"]["uid"] = "99887766-0000"
    assert {c["metadata"]["name"] for c in builders.build_state_claims(rerun)}.isdisjoint(claims)


def test_storage_options_postgres_store_and_emptydir() -> None:
    sized = _session(storage={"size": "5Gi", "storageClassName": "fast"})
    assert {c["spec"]["storageClassName"] for c in builders.build_state_claims(sized)} == {"fast"}
    assert {c["spec"]["resources"]["requests"]["storage"] for c in builders.build_state_claims(sized)} == {"5Gi"}
    postgres = _session(database={"secretRef": {"name": "db"}})
    assert [c["metadata"]["name"] for c in builders.build_state_claims(postgres)] == ["s1-aggregator-state-0f1e2d3c"]
    assert _pod_volume(builders.build_coordinator_deployment(postgres), names.STATE_DIR)["emptyDir"] == {}
    ephemeral = _session(storage={"type": "EmptyDir"})
    assert builders.build_state_claims(ephemeral) == []
    checkpoints = _pod_volume(builders.build_aggregator_deployment(ephemeral), builders.CHECKPOINT_DIR)
    assert checkpoints == {"name": "checkpoints", "emptyDir": {}}


@pytest.mark.parametrize("component", ["coordinator", "aggregator"])
def test_disruption_budget_selects_exactly_its_deployments_pods(component: str) -> None:
    session = _session()
    budget = builders.build_disruption_budget(session, component=component, api_version="policy/v1beta1")
    build = getattr(builders, f"build_{component}_deployment")
    pod_labels = build(session)["spec"]["template"]["metadata"]["labels"]
    other = "aggregator" if component == "coordinator" else "coordinator"
    other_labels = getattr(builders, f"build_{other}_deployment")(session)["spec"]["template"]["metadata"]["labels"]
    selector = budget["spec"]["selector"]["matchLabels"]
    assert budget["apiVersion"] == "policy/v1beta1" and budget["spec"]["minAvailable"] == 1
    assert selector.items() <= pod_labels.items() and not selector.items() <= other_labels.items()


def test_participant_job_passes_its_simulation_to_the_participant_cli() -> None:
    session = _session()
    honest = _parse("participant", _container(builders.build_participant_job(_participant(), session))["args"][1:])
    assert honest.simulate_byzantine is None
    attacker = _participant(simulation={"byzantine": "signflip", "scale": 3.5})
    parsed = _parse("participant", _container(builders.build_participant_job(attacker, session))["args"][1:])
    assert (parsed.simulate_byzantine, parsed.simulate_scale) == ("signflip", 3.5)
    defaulted = _participant(simulation={"byzantine": "signflip"})
    parsed = _parse("participant", _container(builders.build_participant_job(defaulted, session))["args"][1:])
    assert parsed.simulate_scale == 10.0


def test_services_select_their_deployment_pods() -> None:
    s = _session()
    for dep, svc in [
        (builders.build_coordinator_deployment(s), builders.build_coordinator_service(s)),
        (builders.build_aggregator_deployment(s), builders.build_aggregator_service(s)),
    ]:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        assert {p["name"] for p in svc["spec"]["ports"]} >= {"metrics"}
    coord, agg = builders.build_coordinator_service(s), builders.build_aggregator_service(s)
    assert coord["spec"]["selector"] != agg["spec"]["selector"]


def test_expose_node_port_sets_service_type_ports_and_certificate_names() -> None:
    s = _session(expose={"type": "NodePort", "addresses": ["10.245.0.1", "fl.example.org"],
                         "coordinatorNodePort": 30443, "aggregatorNodePort": 30555})  # fmt: skip
    coord, agg = builders.build_coordinator_service(s), builders.build_aggregator_service(s)
    assert coord["spec"]["type"] == agg["spec"]["type"] == "NodePort"
    assert coord["spec"]["ports"][0]["nodePort"] == 30443 and agg["spec"]["ports"][0]["nodePort"] == 30555
    # NB: metrics stay unpublished; a node port on them would open /metrics to the outside
    assert all("nodePort" not in p for svc in (coord, agg) for p in svc["spec"]["ports"][1:])
    sans = builders.server_names(s)
    assert sans[: len(names.server_names("s1", "team"))] == names.server_names("s1", "team")
    assert sans[-2:] == ["10.245.0.1", "fl.example.org"]


def test_expose_defaults_to_cluster_ip_without_external_names() -> None:
    s = _session()
    assert builders.build_coordinator_service(s)["spec"]["type"] == "ClusterIP"
    assert builders.server_names(s) == names.server_names("s1", "team")


def test_node_ports_without_type_node_port_are_rejected() -> None:
    with pytest.raises(Exception, match="need type NodePort"):
        _session(expose={"coordinatorNodePort": 30443})


def test_participant_job_mounts_only_its_own_private_data() -> None:
    p = _participant(
        node={"site": "a"},
        image="custom:2",
        promptRef={"secretKeyRef": {"name": "prompt-a", "key": "p"}},
        dataRef={"configMapKeyRef": {"name": "data-a", "key": "d"}},
    )
    job = builders.build_participant_job(p, _session(resilience={"retries": 1}, startTimeoutSeconds=900))
    pod = job["spec"]["template"]["spec"]
    # pod restarts are not network retries: a Job keeps Kubernetes' 6 whatever resilience.retries says,
    # and the participant waits for its session as long as the session waits for it
    assert job["spec"]["backoffLimit"] == 6 and pod["restartPolicy"] == "Never"
    assert _parse("participant", _container(job)["args"][1:]).wait_seconds == 900
    assert pod["nodeSelector"] == {"site": "a"} and _container(job)["image"] == "custom:2"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["pki"]["secret"]["secretName"] == "site-a-credentials"
    assert volumes["private-prompt"]["secret"] == {
        "secretName": "prompt-a",
        "defaultMode": 0o400,
        "items": [{"key": "p", "path": "prompt"}],
    }
    assert volumes["private-data"]["configMap"] == {"name": "data-a", "items": [{"key": "d", "path": "data"}]}
    parsed = _parse("participant", _container(job)["args"][1:])
    assert (parsed.name, parsed.session, str(parsed.prompt_file)) == ("site-a", "s1", "/etc/fedattn/private/prompt")
    assert job["metadata"]["labels"]["fedattn.io/participant"] == "site-a"


def test_secrets_hold_the_material_given_and_only_public_keys_reach_the_allowlist() -> None:
    s = _session()
    ca = pki.make_ca("ca")
    server = pki.issue(ca, "server", server_names=names.server_names("s1", "team"))
    secret = builders.build_server_tls_secret(s, ca_cert=ca.cert_pem, server=server)
    assert builders.secret_bytes(secret, "server.crt") == server.cert_pem
    assert base64.b64decode(secret["data"]["ca.crt"]) == ca.cert_pem
    pair = pki.curve_keypair()
    allow = builders.build_allowlist(s, {"site-a": pair.public})
    assert allow["data"] == {"site-a.curve.pub": pair.public.decode()}


def test_cert_manager_mode_projects_its_secret_with_our_file_names() -> None:
    s = _session(tls={"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}})
    cert = builders.build_certificate(
        s, name="x", secret_name="x", common_name="server", dns_names=["a.b"], usages=["server auth"]
    )
    assert cert["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    job = builders.build_participant_job(_participant(), s)
    pki_volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "pki")
    sources = pki_volume["projected"]["sources"]
    assert sources[0]["secret"]["name"] == "site-a-certificate"
    assert {i["path"] for i in sources[0]["secret"]["items"]} == {"site-a.crt", "site-a.key", "ca.crt"}
    assert {i["key"] for i in sources[1]["secret"]["items"]} == {"site-a.curve.pub", "site-a.curve.sec"}
    cm_secret = {"data": {"tls.crt": base64.b64encode(b"C").decode(), "tls.key": base64.b64encode(b"K").decode()}}
    assert builders.identity_files(cm_secret, "operator") == {"operator.crt": b"C", "operator.key": b"K"}


def test_long_names_are_cut_to_a_stable_dns_label() -> None:
    long = "x" * 70
    assert len(names.coordinator(long)) == 63 and names.coordinator(long) == names.coordinator(long)
    assert names.coordinator(long) != names.aggregator(long)


def _byom_example() -> tuple[dict, dict]:
    """The FedSession and first FedParticipant of examples/byom/torch-breast-cancer.yaml."""
    session, participant, *_ = yaml.safe_load_all((ROOT / "examples/byom/torch-breast-cancer.yaml").read_text())
    return _session(**session["spec"]), _participant(**{**participant["spec"], "sessionRef": "s1"})


def test_participant_job_passes_the_users_client_volumes_and_mount_paths():
    session, participant = _byom_example()
    pod = builders.build_participant_job(participant, session)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/fedattn-byom:0.1"
    args = container["args"]
    assert args[args.index("--client") + 1] == "torch_client:make_client"
    assert args[args.index("--volume") + 1] == "site-data=/data"
    assert {"name": "site-data", "persistentVolumeClaim": {"claimName": "site-a"}} in pod["volumes"]
    assert {"name": "site-data", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    parsed = _parse("participant", args[1:])  # NB: args[0] is the subcommand
    assert (parsed.client, parsed.volume) == ("torch_client:make_client", ["site-data=/data"])


def test_aggregator_mounts_the_output_claim_and_writes_there():
    session, _ = _byom_example()
    pod = builders.build_aggregator_deployment(session)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    parsed = _parse("aggregator", container["args"][1:])
    assert parsed.output_dir == parsed.model_dir == Path(builders.OUTPUT_DIR)
    assert {"name": "output", "persistentVolumeClaim": {"claimName": "fedattn-results"}} in pod["volumes"]
    assert {"name": "output", "mountPath": builders.OUTPUT_DIR} in container["volumeMounts"]
