"""Sessions run in pods on the test node (node.py): apply an example, follow it to a terminal phase while
an optional fault acts, and compare what was acknowledged with what the coordinator's store holds.

*Acknowledged* is the largest per-participant contribution count the operator mirrored into each
FedParticipant's status during the run (the coordinator's acknowledgements of accepted updates);
*stored* is ``COUNT(*)`` of the session's rows in the coordinator's store at the end, read inside the
coordinator pod (``kubectl exec``-like, through the kubelet). A contribution acknowledged but not stored
is a lost one.
"""

from __future__ import annotations

import base64
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
from kube import create_all, dynamic, load_manifests
from kubernetes.stream import stream

from fedattn.operator import names

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("Succeeded", "Failed")
PARTICIPANT_FINAL = ("Done", "Failed", "Evicted")
TRAINED = re.compile(r"trained round (\d+)")
STORE = f"{names.STATE_DIR}/store.sqlite3"
COUNT_STORED = (
    "import sqlite3, sys; "
    f"db = sqlite3.connect('{STORE}'); "
    "print(db.execute('SELECT COUNT(*) FROM contributions WHERE session = ?', (sys.argv[1],)).fetchone()[0])"
)

#: a fault: called on every poll with the session's status until it acts; returns the round it acted in
Fault = Callable[[dict], int | None]


@dataclass
class Outcome:
    """How a session in pods ended."""

    name: str
    phase: str
    seconds: float
    status: dict
    participants: dict[str, dict]
    acknowledged: int
    stored: int | None
    #: the round the fault acted in (what it saw); None if it never did
    fault_at: int | None = None
    notes: list[str] = field(default_factory=list)

    def phases(self) -> dict[str, str | None]:
        return {name: st.get("phase") for name, st in self.participants.items()}

    def condition(self, type_: str) -> dict:
        return next((c for c in self.status.get("conditions", []) if c["type"] == type_), {})


def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


def read_session(api: kubernetes.client.ApiClient, *, namespace: str, name: str) -> dict:
    return custom(api).get_namespaced_custom_object("fedattn.io", "v1alpha1", namespace, "fedsessions", name)


def participants_of(api: kubernetes.client.ApiClient, *, namespace: str, session: str) -> dict[str, dict]:
    items = custom(api).list_namespaced_custom_object("fedattn.io", "v1alpha1", namespace, "fedparticipants")
    return {p["metadata"]["name"]: p for p in items["items"] if p["spec"].get("sessionRef") == session}


def component_pods(
    api: kubernetes.client.ApiClient, *, namespace: str, session: str, component: str
) -> list[kubernetes.client.V1Pod]:
    selector = f"app.kubernetes.io/instance={session},app.kubernetes.io/component={component}"
    core = kubernetes.client.CoreV1Api(api)
    return core.list_namespaced_pod(namespace, label_selector=selector).items


def count_stored(
    api: kubernetes.client.ApiClient, *, namespace: str, session: str, timeout_s: float = 120.0
) -> int | None:
    """The session's contributions in the store of its coordinator pod, once one is Ready (a fault may
    just have replaced it); None if none becomes Ready in ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready = [
            p
            for p in component_pods(api, namespace=namespace, session=session, component="coordinator")
            if not p.metadata.deletion_timestamp and all(c.ready for c in p.status.container_statuses or [False])
        ]
        if ready:
            break
        if time.monotonic() > deadline:
            return None
        time.sleep(1.0)
    pod = ready[0].metadata.name
    out = exec_in(api, namespace=namespace, pod=pod, command=["python", "-c", COUNT_STORED, session])
    return int(out.strip().splitlines()[-1])


def trained_round(api: kubernetes.client.ApiClient, *, namespace: str, session: str) -> int:
    """The highest round any running participant pod has logged as trained: the session's progress as
    it happens (the operator's status trails it by a poll, longer than a whole short session)."""
    core = kubernetes.client.CoreV1Api(api)
    best = 0
    for pod in component_pods(api, namespace=namespace, session=session, component="participant"):
        if pod.status.phase != "Running":
            continue
        try:
            log = core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=20)
        except kubernetes.client.ApiException:
            continue
        best = max([best, *(int(n) for n in TRAINED.findall(log))])
    return best


def exec_in(api: kubernetes.client.ApiClient, *, namespace: str, pod: str, command: list[str]) -> str:
    """Run ``command`` in the pod's first container (through the API server and the kubelet); its output."""
    core = kubernetes.client.CoreV1Api(api)
    return stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=command,
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )


def run_session(
    api: kubernetes.client.ApiClient,
    *,
    docs: list[dict],
    namespace: str,
    timeout_s: float = 600.0,
    fault: Fault | None = None,
) -> Outcome:
    """Create ``docs`` (one FedSession and what it needs) in ``namespace`` and follow the session to a
    terminal phase (the bound guards against hanging; it is not a performance assertion)."""
    session = next(d["metadata"]["name"] for d in docs if d["kind"] == "FedSession")
    started = time.monotonic()
    create_all(dynamic(api), docs, namespace=namespace)
    acked: dict[str, int] = {}
    acted_at: int | None = None
    status: dict = {}
    while time.monotonic() - started < timeout_s:
        status = read_session(api, namespace=namespace, name=session).get("status") or {}
        for name, p in participants_of(api, namespace=namespace, session=session).items():
            acked[name] = max(acked.get(name, 0), int((p.get("status") or {}).get("contributions", 0)))
        if fault is not None and acted_at is None:
            acted_at = fault(status)
        if status.get("phase") in TERMINAL:
            break
        time.sleep(1.0)
    seconds = time.monotonic() - started
    # NB: the operator mirrors participants after the session; give their statuses time to settle.
    settle = time.monotonic() + 60
    participants = participants_of(api, namespace=namespace, session=session)
    while time.monotonic() < settle and not all(
        (p.get("status") or {}).get("phase") in PARTICIPANT_FINAL for p in participants.values()
    ):
        time.sleep(1.0)
        participants = participants_of(api, namespace=namespace, session=session)
    for name, p in participants.items():
        acked[name] = max(acked.get(name, 0), int((p.get("status") or {}).get("contributions", 0)))
    return Outcome(
        name=session,
        phase=status.get("phase", "<none>"),
        seconds=seconds,
        status=status,
        participants={n: p.get("status") or {} for n, p in participants.items()},
        acknowledged=sum(acked.values()),
        stored=count_stored(api, namespace=namespace, session=session),
        fault_at=acted_at,
    )


def example(name: str, *, deadline_s: int | None = None, rounds: int | None = None) -> list[dict]:
    """The documents of ``examples/NAME``; ``deadline_s`` sets the session's activeDeadlineSeconds, so a
    session a fault strands fails with DeadlineExceeded instead of hanging; ``rounds`` overrides its
    number of rounds (a fault needs a session long enough to hit it mid-way)."""
    docs = load_manifests(REPO / "examples" / name)
    for doc in docs:
        if doc["kind"] == "FedSession":
            if deadline_s is not None:
                doc["spec"]["activeDeadlineSeconds"] = deadline_s
            if rounds is not None:
                doc["spec"]["rounds"] = rounds
    return docs


def delete_session(
    api: kubernetes.client.ApiClient, *, docs: list[dict], namespace: str, timeout_s: float = 180.0
) -> None:
    """Delete what ``run_session`` created and wait until it and the session's pods are gone (the
    garbage collector removes the children), so the next test may reuse the names."""
    client = dynamic(api)
    for doc in docs:
        resource = client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        with contextlib.suppress(kubernetes.dynamic.exceptions.NotFoundError):
            resource.delete(name=doc["metadata"]["name"], namespace=namespace)
    session = next(d["metadata"]["name"] for d in docs if d["kind"] == "FedSession")
    core = kubernetes.client.CoreV1Api(api)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [
            doc["metadata"]["name"]
            for doc in docs
            if _exists(client, doc, namespace=namespace)
        ]
        pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={session}").items
        if not left and not pods:
            return
        time.sleep(1.0)
    raise AssertionError(f"session {session} not gone after {timeout_s:.0f} s: {left} and {len(pods)} pods left")


def _exists(client, doc: dict, *, namespace: str) -> bool:
    resource = client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    try:
        resource.get(name=doc["metadata"]["name"], namespace=namespace)
    except kubernetes.dynamic.exceptions.NotFoundError:
        return False
    return True


def record(outcome: Outcome, *, scenario: str, log: Path) -> None:
    """Append one line of the scenario table (scenario, wall time, phase, acknowledged vs stored)."""
    line = (
        f"{scenario}\t{outcome.seconds:.0f} s\t{outcome.phase}"
        f" ({outcome.condition('Failed').get('reason', '')})\tack {outcome.acknowledged}\tstored {outcome.stored}"
        f"\tfault at {outcome.fault_at}"
    )
    with open(log, "a") as out:
        out.write(line + "\n")
    print(line)


def export_credentials(api: kubernetes.client.ApiClient, *, namespace: str, participant: str, dest: Path) -> Path:
    """What a site administrator does with ``kubectl get secret``: write the participant's credentials
    Secret (ca.crt, NAME.crt/.key, NAME.curve.pub/.sec) out as a ``--pki-dir``."""
    core = kubernetes.client.CoreV1Api(api)
    secret = core.read_namespaced_secret(names.participant_secret(participant), namespace)
    dest.mkdir(parents=True, exist_ok=True)
    for key, value in (secret.data or {}).items():
        path = dest / key
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o600)
    return dest
