"""Pure builders: a FedSession / FedParticipant (spec typed, see objects.py) in, Kubernetes objects out.

No I/O and no randomness here: key material is made by the caller (``fedattn.pki``) and passed in,
so each builder is a plain function a test can call and compare. Owner references and namespaces
are added by the handlers (``kopf.adopt``), not here.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from fedattn import pki
from fedattn.api.spec import DataRef, ExposeSpec, PodTemplate
from fedattn.operator import names
from fedattn.operator.objects import Participant, Session

DEFAULT_IMAGE = "fedattn:0.1.0"
UID = 10001
CERT_MANAGER_GROUP = "cert-manager.io"
#: a participant Job's backoffLimit: Kubernetes' own default, independent of spec.resilience.retries
PARTICIPANT_POD_RESTARTS = 6


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def secret_bytes(secret: dict[str, Any], key: str) -> bytes:
    """One decoded value of a Secret read back from the API."""
    return base64.b64decode((secret.get("data") or {})[key])


def _meta(name: str, session: str, component: str, *, participant: str | None = None) -> dict[str, Any]:
    labels = {k: names.fit(v) for k, v in names.labels(session, component, participant=participant).items()}
    return {"name": name, "labels": labels}


def _selector(meta: dict[str, Any]) -> dict[str, str]:
    """The labels that pick one component's pods of one session (Deployment, Service, PDB)."""
    return {k: meta["labels"][k] for k in ("app.kubernetes.io/instance", "app.kubernetes.io/component")}


def _secret(name: str, session: str, component: str, data: dict[str, bytes], **kw: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(name, session, component, **kw),
        "data": {k: b64(v) for k, v in sorted(data.items())},
    }


def build_ca_secret(session: Session, ca: pki.KeyPair) -> dict[str, Any]:
    """The session CA; only the operator reads it (it is never mounted into a pod)."""
    s = session["metadata"]["name"]
    return _secret(names.ca_secret(s), s, "ca", {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem})


def build_server_tls_secret(session: Session, *, ca_cert: bytes, server: pki.KeyPair) -> dict[str, Any]:
    """The coordinator's HTTPS identity (``server``), with the CA that verifies client certificates."""
    s = session["metadata"]["name"]
    data = {"ca.crt": ca_cert, f"{names.SERVER}.crt": server.cert_pem, f"{names.SERVER}.key": server.key_pem}
    return _secret(names.server_tls_secret(s), s, "coordinator", data)


def build_curve_secret(session: Session, *, server: pki.CurveKeyPair, control: pki.CurveKeyPair) -> dict[str, Any]:
    """Curve pairs of the aggregator (``server``) and of the coordinator's control link."""
    s = session["metadata"]["name"]
    data = {
        f"{names.SERVER}.curve.pub": server.public,
        f"{names.SERVER}.curve.sec": server.secret,
        f"{names.CONTROL_CLIENT}.curve.pub": control.public,
        f"{names.CONTROL_CLIENT}.curve.sec": control.secret,
    }
    return _secret(names.curve_secret(s), s, "aggregator", data)


def build_identity_secret(
    session: Session,
    name: str,
    *,
    ca_cert: bytes,
    pair: pki.KeyPair,
    curve: pki.CurveKeyPair | None = None,
    secret_name: str,
    component: str,
    participant: str | None = None,
) -> dict[str, Any]:
    """A client identity laid out as a ``--pki-dir``: ca.crt, NAME.crt/.key and NAME.curve.pub/.sec."""
    data = {"ca.crt": ca_cert, f"{name}.crt": pair.cert_pem, f"{name}.key": pair.key_pem}
    if curve is not None:
        data |= {f"{name}.curve.pub": curve.public, f"{name}.curve.sec": curve.secret}
    return _secret(secret_name, session["metadata"]["name"], component, data, participant=participant)


def build_allowlist(session: Session, keys: dict[str, bytes]) -> dict[str, Any]:
    """The aggregator's allowlist: identity name -> Curve PUBLIC key (never a secret half)."""
    s = session["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(names.allowlist(s), s, "aggregator"),
        "data": {names.curve_public_key(n): k.decode() for n, k in sorted(keys.items())},
    }


def _security() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return pod, container


def _probes() -> dict[str, Any]:
    def probe(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3}

    # NB: the liveness probe waits for the startup probe: a process still importing numpy/scipy on a
    # loaded node (measured: over 30 s on 2 busy cores) is slow, not dead, and must not be restarted.
    startup = {**probe("/healthz"), "periodSeconds": 2, "failureThreshold": 90}
    return {"startupProbe": startup, "livenessProbe": probe("/healthz"), "readinessProbe": probe("/readyz")}


def _secret_volume(name: str, secret: str, items: list[str] | None = None) -> dict[str, Any]:
    src: dict[str, Any] = {"secretName": secret, "defaultMode": 0o400}
    if items:
        src["items"] = [{"key": k, "path": k} for k in items]
    return {"name": name, "secret": src}


def uses_cert_manager(session: Session) -> bool:
    return session["spec"].tls.issuer_ref is not None


#: cert-manager's Secret keys -> our ``--pki-dir`` file names (NAME filled in).
CERT_MANAGER_KEYS = {"tls.crt": "{}.crt", "tls.key": "{}.key", "ca.crt": "ca.crt"}


def identity_files(secret: dict[str, Any], identity: str) -> dict[str, bytes]:
    """Our file layout from either our own Secret or a cert-manager one (``tls.crt`` ...)."""
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    for key, pattern in CERT_MANAGER_KEYS.items():
        if key in data:
            data[pattern.format(identity)] = data.pop(key)
    return data


def _identity_volume(
    session: Session,
    name: str,
    *,
    identity: str,
    secret: str,
    certificate_secret: str,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """TLS identity files for a pod: our own Secret, or cert-manager's plus our Curve keys (projected)."""
    if not uses_cert_manager(session):
        return _secret_volume(name, secret)
    items = [{"key": k, "path": p.format(identity)} for k, p in CERT_MANAGER_KEYS.items()]
    sources = [{"secret": {"name": certificate_secret, "items": items}}]
    if extra:
        sources.append({"secret": {"name": secret, "items": [{"key": k, "path": k} for k in extra]}})
    return {"name": name, "projected": {"sources": sources, "defaultMode": 0o400}}


def _deployment(
    session: Session,
    *,
    component: str,
    name: str,
    args: list[str],
    ports: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    image: str,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    s = session["metadata"]["name"]
    spec = session["spec"]
    template: PodTemplate = getattr(spec, component)
    pod_security, container_security = _security()
    meta = _meta(name, s, component)
    selector = _selector(meta)
    container = {
        "name": component,
        "image": template.image or image,
        "args": [component, *args],
        "ports": ports,
        "volumeMounts": mounts,
        "resources": template.resources or {},
        "securityContext": container_security,
        **_probes(),
    }
    if env:
        container["env"] = env
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 0 if spec.suspend else 1,
            "strategy": {"type": "Recreate"},  # NB: one coordinator/aggregator per session, never two
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": meta["labels"]},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security,
                    "nodeSelector": template.node_selector or {},
                    "tolerations": list(template.tolerations or ()),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


#: components whose state lives on a claim of their own (spec.storage)
STATEFUL = ("coordinator", "aggregator")


def build_state_claim(session: Session, *, component: str) -> dict[str, Any]:
    """The PersistentVolumeClaim of the coordinator's SQLite store or the aggregator's checkpoints.

    One claim per component, because ReadWriteOnce cannot be shared by pods on two nodes. It outlives
    pod restarts, node drains and suspend; the session owns it, so deleting the session deletes it.
    """
    if component not in STATEFUL:
        raise ValueError(f"{component!r} keeps no state; choose one of {STATEFUL}")
    meta, storage = session["metadata"], session["spec"].storage
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    name = names.state_claim(meta["name"], component, uid=meta.get("uid", ""))
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(name, meta["name"], component),
        "spec": spec,
    }


def _claims_state(session: Session, component: str) -> bool:
    """Does this component keep its state on a claim? Not with spec.storage EmptyDir, and not the
    coordinator of a session whose store is PostgreSQL (spec.database)."""
    spec = session["spec"]
    return spec.storage.durable and not (component == "coordinator" and spec.database is not None)


def build_state_claims(session: Session) -> list[dict[str, Any]]:
    """Every claim the session's pods mount (none with spec.storage EmptyDir)."""
    return [build_state_claim(session, component=c) for c in STATEFUL if _claims_state(session, c)]


def _state_volume(session: Session, volume: str, *, component: str) -> dict[str, Any]:
    if not _claims_state(session, component):
        return {"name": volume, "emptyDir": {}}  # NB: lost with the pod (EmptyDir, or the store is PostgreSQL)
    claim = build_state_claim(session, component=component)["metadata"]["name"]
    return {"name": volume, "persistentVolumeClaim": {"claimName": claim}}


def build_disruption_budget(session: Session, *, component: str, api_version: str = "policy/v1") -> dict[str, Any]:
    """Keeps a voluntary eviction (node drain) from taking a running session's coordinator or aggregator.

    Only while the session runs: the operator deletes it on suspend and once the session finished, so
    a drain then goes through. ``api_version`` is ``policy/v1beta1`` before Kubernetes 1.21.
    """
    s = session["metadata"]["name"]
    meta = _meta(names.disruption_budget(s, component), s, component)
    return {
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": meta,
        "spec": {"minAvailable": 1, "selector": {"matchLabels": _selector(meta)}},
    }


def _metrics_port() -> dict[str, Any]:
    return {"name": "metrics", "containerPort": names.METRICS_PORT, "protocol": "TCP"}


def build_coordinator_deployment(session: Session, *, image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The coordinator: HTTPS API with the session's server certificate, store, control link."""
    s, ns = session["metadata"]["name"], session["metadata"]["namespace"]
    curve = names.CURVE_DIR
    database = session["spec"].database
    # NB: the DSN reaches the coordinator as env, never in its args: a $(VAR) in args would be
    # expanded by the kubelet into the command line, where every process on the node reads it.
    dsn: dict[str, Any] = {"value": f"sqlite:///{names.STATE_DIR}/store.sqlite3"}
    if database:
        ref = database.secret_ref
        dsn = {"valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    env = [{"name": "FEDATTN_DATABASE_DSN", **dsn}]
    args = [
        "--api-host", "0.0.0.0",
        "--api-port", str(names.API_PORT),
        "--metrics-host", "0.0.0.0",
        "--metrics-port", str(names.METRICS_PORT),
        "--tls-cert", f"{names.TLS_DIR}/{names.SERVER}.crt",
        "--tls-key", f"{names.TLS_DIR}/{names.SERVER}.key",
        "--tls-ca", f"{names.TLS_DIR}/ca.crt",
        "--aggregator", names.aggregator_endpoint(s, ns),
        "--aggregator-public-key", f"{curve}/{names.SERVER}.curve.pub",
        "--client-curve-public", f"{curve}/{names.CONTROL_CLIENT}.curve.pub",
        "--client-curve-secret", f"{curve}/{names.CONTROL_CLIENT}.curve.sec",
    ]  # fmt: skip
    curve_items = [
        f"{names.SERVER}.curve.pub",
        f"{names.CONTROL_CLIENT}.curve.pub",
        f"{names.CONTROL_CLIENT}.curve.sec",
    ]
    return _deployment(
        session,
        component="coordinator",
        name=names.coordinator(s),
        args=args,
        ports=[{"name": "https", "containerPort": names.API_PORT, "protocol": "TCP"}, _metrics_port()],
        volumes=[
            _identity_volume(
                session,
                "tls",
                identity=names.SERVER,
                secret=names.server_tls_secret(s),
                certificate_secret=names.server_tls_secret(s),
            ),
            _secret_volume("curve", names.curve_secret(s), curve_items),
            _state_volume(session, "state", component="coordinator"),
        ],
        mounts=[
            {"name": "tls", "mountPath": names.TLS_DIR, "readOnly": True},
            {"name": "curve", "mountPath": curve, "readOnly": True},
            {"name": "state", "mountPath": names.STATE_DIR},
        ],
        image=image,
        env=env,
    )


#: where the aggregator writes learning checkpoints (spec.checkpoint.everyRounds)
CHECKPOINT_DIR = f"{names.STATE_DIR}/checkpoints"


#: where the aggregator mounts ``spec.output.claimName`` (models and metrics out, ``model.initial`` in)
OUTPUT_DIR = "/var/lib/fedattn/output"


def _output_claim(session: Session) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Aggregator args, volumes and mounts for ``spec.output.claimName`` (none without one)."""
    output = session["spec"].output
    if output is None or output.claim_name is None:
        return [], [], []
    return (
        ["--output-dir", OUTPUT_DIR, "--model-dir", OUTPUT_DIR],
        [{"name": "output", "persistentVolumeClaim": {"claimName": output.claim_name}}],
        [{"name": "output", "mountPath": OUTPUT_DIR}],
    )


def build_aggregator_deployment(session: Session, *, image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The aggregator: ZMQ ROUTER with the Curve server key, allowlist mounted as a directory, and
    the ``spec.output`` claim where it writes the trained models."""
    s = session["metadata"]["name"]
    output_args, output_volumes, output_mounts = _output_claim(session)
    curve = names.CURVE_DIR
    args = [
        "--bind", f"tcp://0.0.0.0:{names.ZMQ_PORT}",
        "--curve-secret", f"{curve}/{names.SERVER}.curve.sec",
        "--curve-public", f"{curve}/{names.SERVER}.curve.pub",
        "--allow-dir", names.ALLOW_DIR,
        "--metrics-host", "0.0.0.0",
        "--metrics-port", str(names.METRICS_PORT),
        "--checkpoint-dir", CHECKPOINT_DIR,
        *output_args,
    ]  # fmt: skip
    return _deployment(
        session,
        component="aggregator",
        name=names.aggregator(s),
        args=args,
        ports=[{"name": "zmq", "containerPort": names.ZMQ_PORT, "protocol": "TCP"}, _metrics_port()],
        volumes=[
            _secret_volume("curve", names.curve_secret(s), [f"{names.SERVER}.curve.pub", f"{names.SERVER}.curve.sec"]),
            {"name": "allow", "configMap": {"name": names.allowlist(s)}},
            _state_volume(session, "checkpoints", component="aggregator"),
            *output_volumes,
        ],
        mounts=[
            {"name": "curve", "mountPath": curve, "readOnly": True},
            {"name": "allow", "mountPath": names.ALLOW_DIR, "readOnly": True},
            {"name": "checkpoints", "mountPath": CHECKPOINT_DIR},
            *output_mounts,
        ],
        image=image,
    )


def exposure(session: Session) -> ExposeSpec:
    """``spec.expose`` with its schema defaults (ClusterIP, no external addresses)."""
    return session["spec"].expose


def server_names(session: Session) -> list[str]:
    """The coordinator certificate's names: its Service's, plus the addresses outside sites dial."""
    meta = session["metadata"]
    return names.server_names(meta["name"], meta["namespace"], external=exposure(session).addresses or ())


def _service(
    session: Session, *, component: str, name: str, port: dict[str, Any], node_port: int | None
) -> dict[str, Any]:
    s = session["metadata"]["name"]
    meta = _meta(name, s, component)
    kind = exposure(session).type
    main = {**port, "targetPort": port["name"], "protocol": "TCP"}
    if kind == "NodePort" and node_port:
        main["nodePort"] = node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": kind,
            "selector": _selector(meta),
            "ports": [
                main,
                {"name": "metrics", "port": names.METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def build_coordinator_service(session: Session) -> dict[str, Any]:
    s = session["metadata"]["name"]
    port = {"name": "https", "port": names.API_PORT}
    node_port = exposure(session).coordinator_node_port
    return _service(session, component="coordinator", name=names.coordinator(s), port=port, node_port=node_port)


def build_aggregator_service(session: Session) -> dict[str, Any]:
    s = session["metadata"]["name"]
    return _service(
        session,
        component="aggregator",
        name=names.aggregator(s),
        port={"name": "zmq", "port": names.ZMQ_PORT},
        node_port=exposure(session).aggregator_node_port,
    )


def _private_volume(ref: DataRef, key: str) -> dict[str, Any]:
    if ref.config_map_key_ref is not None:
        src = ref.config_map_key_ref
        return {
            "name": f"private-{key}",
            "configMap": {"name": src.name, "items": [{"key": src.key, "path": key}]},
        }
    src = ref.secret_key_ref
    if src is None:  # NB: the CEL rule wants exactly one of the two
        raise ValueError(f"{key}Ref sets neither configMapKeyRef nor secretKeyRef")
    items = [{"key": src.key, "path": key}]
    return {
        "name": f"private-{key}",
        "secret": {"secretName": src.name, "items": items, "defaultMode": 0o400},
    }


def _user_code_and_data(participant: Participant) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """``spec.client`` as ``--client``, ``spec.volumes``/``volumeMounts`` passed through to the pod,
    each mount's path handed to the client factory (``--volume NAME=PATH``); docs/byom.md."""
    typed = participant["spec"]
    args = ["--client", typed.client.module] if typed.client is not None else []
    mounts = []
    for mount in typed.volume_mounts or ():
        args += ["--volume", f"{mount.name}={mount.mount_path}"]
        mounts.append({"name": mount.name, "mountPath": mount.mount_path, "readOnly": mount.read_only,
                       **({"subPath": mount.sub_path} if mount.sub_path else {})})
    # NB: a user volume named like ours ("pki", "private-data") makes the API server refuse the Job
    return args, [dict(v) for v in typed.volumes or ()], mounts


def build_participant_job(participant: Participant, session: Session, *, image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """An in-cluster participant: its credentials and only its own private data, pinned by ``spec.node``."""
    p, ns = participant["metadata"]["name"], participant["metadata"]["namespace"]
    s = session["metadata"]["name"]
    spec = participant["spec"]
    pod_security, container_security = _security()
    args = [
        "participant",
        "--coordinator", names.coordinator_url(s, ns),
        "--session", s,
        "--name", p,
        "--pki-dir", names.PKI_DIR,
        "--wait-seconds", str(session["spec"].start_timeout_seconds),
    ]  # fmt: skip
    simulation = spec.simulation
    if simulation is not None and simulation.byzantine:  # testing only: a deliberately misbehaving participant
        args += ["--simulate-byzantine", simulation.byzantine,
                 "--simulate-scale", str(simulation.scale)]  # fmt: skip
    curve = (f"{p}.curve.pub", f"{p}.curve.sec")
    volumes = [
        _identity_volume(
            session,
            "pki",
            identity=p,
            secret=names.participant_secret(p),
            certificate_secret=names.participant_certificate(p),
            extra=curve,
        )
    ]
    mounts = [{"name": "pki", "mountPath": names.PKI_DIR, "readOnly": True}]
    for key, ref in (("prompt", spec.prompt_ref), ("data", spec.data_ref)):
        if ref is not None:
            volumes.append(_private_volume(ref, key))
            path = f"{names.PRIVATE_DIR}/{key}"
            mounts.append({"name": f"private-{key}", "mountPath": path, "subPath": key, "readOnly": True})
            args += [f"--{key}-file", path]
    user_args, user_volumes, user_mounts = _user_code_and_data(participant)
    args += user_args
    volumes += user_volumes
    mounts += user_mounts
    publisher = is_publisher(participant, session)
    if publisher:  # NB: its pod writes the generated text to its own output Secret (build_output_writer)
        args += ["--output-secret", names.participant_output(p)]
    meta = _meta(names.participant_job(p), s, "participant", participant=p)
    meta["annotations"] = {names.SESSION_UID: session["metadata"].get("uid", "")}
    identity = (
        {"serviceAccountName": names.participant_output_writer(p), "automountServiceAccountToken": True}
        if publisher
        else {"automountServiceAccountToken": False}
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            # NB: pod restarts (OOM, node loss, a crash), not network retries: those are
            # spec.resilience's, and waiting for the session is the participant's (--wait-seconds).
            "backoffLimit": PARTICIPANT_POD_RESTARTS,
            "template": {
                "metadata": {"labels": meta["labels"]},
                "spec": {
                    "restartPolicy": "Never",
                    **identity,
                    "securityContext": pod_security,
                    "nodeSelector": spec.node or {},
                    "containers": [
                        {
                            "name": "participant",
                            "image": spec.image or image,
                            "args": args,
                            "resources": spec.resources or {},
                            "volumeMounts": mounts,
                            "securityContext": container_security,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }


def is_publisher(participant: Participant, session: Session) -> bool:
    """The in-cluster participant that holds an attention session's question and gets its answer."""
    spec = session["spec"]
    return (
        spec.mode == "attention"
        and spec.publisher == participant["metadata"]["name"]
        and not participant["spec"].external
    )


def build_output_writer(participant: Participant, session: Session) -> list[dict[str, Any]]:
    """The publisher's empty output Secret and the ServiceAccount that may ``get``/``patch`` it and nothing
    else (a Role naming the one Secret, bound to that ServiceAccount): the text goes from its pod to the
    Secret directly, never through the coordinator or the operator."""
    p, s = participant["metadata"]["name"], session["metadata"]["name"]
    secret, writer = names.participant_output(p), names.participant_output_writer(p)
    rbac = "rbac.authorization.k8s.io"
    return [
        _secret(secret, s, "output", {}, participant=p),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(writer, s, "output", participant=p)},
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": _meta(writer, s, "output", participant=p),
            "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get", "patch"]}
            ],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(writer, s, "output", participant=p),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": writer},
            "subjects": [{"kind": "ServiceAccount", "name": writer}],
        },
    ]


def build_certificate(
    session: Session,
    *,
    name: str,
    secret_name: str,
    common_name: str,
    dns_names: list[str] | None = None,
    usages: list[str],
) -> dict[str, Any]:
    """A cert-manager ``Certificate`` (when ``spec.tls.issuerRef`` is set) instead of a self-issued one."""
    s = session["metadata"]["name"]
    issuer = session["spec"].tls.issuer_ref
    if issuer is None:
        raise ValueError("spec.tls.issuerRef is not set: the operator issues this session's certificates")
    spec: dict[str, Any] = {
        "secretName": secret_name,
        "commonName": common_name,
        "usages": usages,
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "issuerRef": {
            "name": issuer.name,
            "kind": issuer.kind,
            "group": issuer.group,
        },
    }
    if dns_names:
        spec["dnsNames"] = [n for n in dns_names if not _is_ip(n)]
        if any(_is_ip(n) for n in dns_names):
            spec["ipAddresses"] = [n for n in dns_names if _is_ip(n)]
    return {
        "apiVersion": f"{CERT_MANAGER_GROUP}/v1",
        "kind": "Certificate",
        "metadata": _meta(name, s, "certificate"),
        "spec": spec,
    }
