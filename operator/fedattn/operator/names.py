"""Deterministic names and labels of everything the operator creates.

A retried handler must find what an earlier attempt made, so every child's name is a pure function
of its owner's name. Names longer than a DNS label get a stable hash suffix instead of failing.
"""

from __future__ import annotations

import hashlib

from fedattn import pki
from fedattn.api import schema

MAX_LABEL = 63

#: Where pods find their material (docs/protocol.md file names inside each directory).
TLS_DIR = "/etc/fedattn/tls"
CURVE_DIR = "/etc/fedattn/curve"
ALLOW_DIR = "/etc/fedattn/allow"
PKI_DIR = "/etc/fedattn/pki"
PRIVATE_DIR = "/etc/fedattn/private"
STATE_DIR = "/var/lib/fedattn"

API_PORT = 8443
METRICS_PORT = 9090
ZMQ_PORT = 5555

SERVER = "server"
CONTROL_CLIENT = pki.CONTROL_CLIENT
OPERATOR = "operator"


def fit(name: str) -> str:
    """``name`` if it is a valid DNS label length, else a truncated one with a stable hash."""
    if len(name) <= MAX_LABEL:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_LABEL - 9].rstrip('-')}-{digest}"


def ca_secret(session: str) -> str:
    return fit(f"{session}-ca")


def server_tls_secret(session: str) -> str:
    return fit(f"{session}-server-tls")


def curve_secret(session: str) -> str:
    return fit(f"{session}-curve")


def operator_secret(session: str) -> str:
    return fit(f"{session}-operator-client")


def allowlist(session: str) -> str:
    return fit(f"{session}-allow")


def coordinator(session: str) -> str:
    return fit(f"{session}-coordinator")


def aggregator(session: str) -> str:
    return fit(f"{session}-aggregator")


def state_claim(session: str, component: str, *, uid: str) -> str:
    """The PersistentVolumeClaim of a session's coordinator or aggregator state.

    NB: the session's UID is part of the name, so a session deleted and re-applied under the same name
    starts on a new claim, never on the store of the run before (which its owner reference deletes).
    """
    return fit(f"{session}-{component}-state-{uid[:8]}" if uid else f"{session}-{component}-state")


def disruption_budget(session: str, component: str) -> str:
    return fit(f"{session}-{component}")


def participant_secret(participant: str) -> str:
    return fit(f"{participant}-credentials")


def participant_certificate(participant: str) -> str:
    """cert-manager's Secret for a participant (when the session uses an issuer)."""
    return fit(f"{participant}-certificate")


def participant_job(participant: str) -> str:
    return fit(f"{participant}-participant")


def coordinator_url(session: str, namespace: str) -> str:
    return f"https://{coordinator(session)}.{namespace}.svc:{API_PORT}"


def aggregator_endpoint(session: str, namespace: str) -> str:
    return f"tcp://{aggregator(session)}.{namespace}.svc:{ZMQ_PORT}"


def server_names(session: str, namespace: str) -> list[str]:
    """SANs of the coordinator's server certificate: every name a client may dial."""
    svc = coordinator(session)
    return [svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.cluster.local"]


def curve_public_key(name: str) -> str:
    """Allowlist entry (file) name for an identity's Curve public key."""
    return f"{name}.curve.pub"


#: annotation on a participant's credentials Secret and Job: the UID of the session run they belong to
SESSION_UID = f"{schema.GROUP}/session-uid"


def labels(session: str, component: str, *, participant: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "fedattn",
        "app.kubernetes.io/instance": session,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "fedattn-operator",
        f"{schema.GROUP}/session": session,
    }
    if participant:
        out[f"{schema.GROUP}/participant"] = participant
    return out
