"""Session PKI and participant credentials as Secrets: issue, renew before expiry, revoke.

Key material comes from :mod:`fedattn.pki` (pure, PEM bytes out); Secrets are created only when
absent, so a retried handler never replaces a key a pod already uses. With ``spec.tls.issuerRef``
the certificates are cert-manager ``Certificate`` objects instead and only the Curve keys (which
cert-manager does not do) are ours.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf
from kubernetes.client import ApiException

from fedattn import pki
from fedattn.operator import builders, names
from fedattn.operator.kube import Kube
from fedattn.operator.metrics import CERTIFICATES_RENEWED
from fedattn.operator.objects import Participant, Session


def _owned(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    kopf.adopt(obj, owner=owner)
    return obj


def _validity(session: Session) -> tuple[int, int]:
    """(validity, renew before) in days of self-signed certificates; only called without issuerRef,
    where the CEL rule makes ``tls.selfSigned`` set (and the schema defaults its fields)."""
    self_signed = session["spec"].tls.self_signed
    if self_signed is None:  # NB: issuerRef and selfSigned are exclusive (CEL); callers checked
        raise ValueError("spec.tls.selfSigned is not set: certificates are cert-manager's")
    return self_signed.validity_days, self_signed.renew_before_days


async def session_ca(kube: Kube, session: Session) -> pki.KeyPair | None:
    meta = session["metadata"]
    secret = await kube.read(kind="Secret", namespace=meta["namespace"], name=names.ca_secret(meta["name"]))
    if secret is None:
        return None
    return pki.KeyPair(builders.secret_bytes(secret, "ca.crt"), builders.secret_bytes(secret, "ca.key"))


async def ensure_session_pki(kube: Kube, session: Session, *, owner: dict[str, Any]) -> bool:
    """CA, server certificate, operator client certificate, Curve keys and allowlist; True when ready.

    Under cert-manager, ready means cert-manager has written the server and operator Secrets.
    """
    s, ns = session["metadata"]["name"], session["metadata"]["namespace"]
    curve, _ = await kube.ensure(
        _owned(
            builders.build_curve_secret(session, server=pki.curve_keypair(), control=pki.curve_keypair()),
            owner,
        )
    )
    control_pub = builders.secret_bytes(curve, f"{names.CONTROL_CLIENT}.curve.pub")
    await kube.ensure(_owned(builders.build_allowlist(session, {names.CONTROL_CLIENT: control_pub}), owner))
    if builders.uses_cert_manager(session):
        await _ensure_certificates(kube, session, owner=owner)
        tls = await kube.read(kind="Secret", namespace=ns, name=names.server_tls_secret(s))
        op = await kube.read(kind="Secret", namespace=ns, name=names.operator_secret(s))
        return bool(tls and op and "tls.crt" in (tls.get("data") or {}) and "tls.crt" in (op.get("data") or {}))
    validity, _ = _validity(session)
    # NB: the CA outlives its leaves many times over, so a renewed leaf is not cut short by the CA's expiry
    ca_days = max(10 * validity, 3650)
    stored, _ = await kube.ensure(
        _owned(builders.build_ca_secret(session, pki.make_ca(f"fedattn-{s}-ca", validity_days=ca_days)), owner)
    )
    ca = pki.KeyPair(builders.secret_bytes(stored, "ca.crt"), builders.secret_bytes(stored, "ca.key"))
    server = pki.issue(ca, names.SERVER, server_names=names.server_names(s, ns), validity_days=validity)
    await kube.ensure(_owned(builders.build_server_tls_secret(session, ca_cert=ca.cert_pem, server=server), owner))
    await kube.ensure(_owned(_operator_secret(session, ca, validity), owner))
    return True


def _operator_secret(session: Session, ca: pki.KeyPair, validity: int) -> dict[str, Any]:
    s = session["metadata"]["name"]
    pair = pki.issue(ca, names.OPERATOR, organization=s, validity_days=validity)
    return builders.build_identity_secret(
        session,
        names.OPERATOR,
        ca_cert=ca.cert_pem,
        pair=pair,
        secret_name=names.operator_secret(s),
        component="operator",
    )


async def _ensure_certificates(kube: Kube, session: Session, *, owner: dict[str, Any]) -> None:
    s, ns = session["metadata"]["name"], session["metadata"]["namespace"]
    if not await kube.has_group_version(f"{builders.CERT_MANAGER_GROUP}/v1"):
        raise kopf.TemporaryError("spec.tls.issuerRef is set but cert-manager.io/v1 is not served", delay=60)
    server = builders.build_certificate(
        session,
        name=names.server_tls_secret(s),
        secret_name=names.server_tls_secret(s),
        common_name=names.SERVER,
        dns_names=names.server_names(s, ns),
        usages=["server auth", "digital signature"],
    )
    client = builders.build_certificate(
        session,
        name=names.operator_secret(s),
        secret_name=names.operator_secret(s),
        common_name=names.OPERATOR,
        usages=["client auth", "digital signature"],
    )
    for cert in (server, client):
        await kube.apply(_owned(cert, owner))


async def operator_identity(kube: Kube, session: Session) -> dict[str, bytes] | None:
    """The operator's client identity for this session's coordinator (files by ``--pki-dir`` name)."""
    meta = session["metadata"]
    secret = await kube.read(kind="Secret", namespace=meta["namespace"], name=names.operator_secret(meta["name"]))
    return None if secret is None else builders.identity_files(secret, names.OPERATOR)


async def ensure_participant(
    kube: Kube,
    participant: Participant,
    session: Session,
    *,
    owner: dict[str, Any],
    retry_seconds: float = 2.0,
) -> bytes:
    """The participant's credentials Secret (and Certificate under cert-manager) plus its allowlist
    entry; returns its Curve public key. Raises TemporaryError while the session's PKI is not there."""
    p, ns = participant["metadata"]["name"], participant["metadata"]["namespace"]
    s = session["metadata"]["name"]
    curve = pki.curve_keypair()
    if builders.uses_cert_manager(session):
        cert = builders.build_certificate(
            session,
            name=names.participant_certificate(p),
            secret_name=names.participant_certificate(p),
            common_name=p,
            usages=["client auth", "digital signature"],
        )
        await kube.apply(_owned(cert, owner))
        secret = builders.build_identity_secret(
            session,
            p,
            ca_cert=b"",
            pair=pki.KeyPair(b"", b""),
            curve=curve,
            secret_name=names.participant_secret(p),
            component="participant",
            participant=p,
        )
        secret["data"] = {k: v for k, v in secret["data"].items() if ".curve." in k}
    else:
        ca = await session_ca(kube, session)
        if ca is None:
            raise kopf.TemporaryError(f"session {s} has no CA yet", delay=retry_seconds)
        validity, _ = _validity(session)
        pair = pki.issue(ca, p, organization=s, validity_days=validity)
        secret = builders.build_identity_secret(
            session,
            p,
            ca_cert=ca.cert_pem,
            pair=pair,
            curve=curve,
            secret_name=names.participant_secret(p),
            component="participant",
            participant=p,
        )
    stored, _ = await kube.ensure(_owned(secret, owner))
    public = builders.secret_bytes(stored, f"{p}.curve.pub")
    body = {"data": {names.curve_public_key(p): public.decode()}}
    if not await _patch_allowlist(kube, ns, s, body):
        raise kopf.TemporaryError(f"allowlist of session {s} does not exist yet", delay=retry_seconds)
    return public


async def revoke(kube: Kube, *, namespace: str, session: str, participant: str) -> None:
    """Remove the participant's allowlist entry (the aggregator rescans it) and its credentials."""
    await _patch_allowlist(kube, namespace, session, {"data": {names.curve_public_key(participant): None}})
    for kind, name in (
        ("Secret", names.participant_secret(participant)),
        ("Certificate", names.participant_certificate(participant)),
        ("Secret", names.participant_certificate(participant)),
        ("Job", names.participant_job(participant)),
    ):
        await kube.delete(kind=kind, namespace=namespace, name=name)  # NB: already gone (or never made) is fine


async def _patch_allowlist(kube: Kube, namespace: str, session: str, body: dict[str, Any]) -> bool:
    try:
        await kube.patch(kind="ConfigMap", namespace=namespace, name=names.allowlist(session), body=body)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def due(cert_pem: bytes, *, now: dt.datetime, renew_before_days: int) -> bool:
    """Whether a certificate is within ``renew_before_days`` of expiry (pure)."""
    return pki.not_after(cert_pem) - now <= dt.timedelta(days=renew_before_days)


async def renew_due(kube: Kube, session: Session, participants: list[str], *, now: dt.datetime) -> list[str]:
    """Reissue self-signed certificates close to expiry (same CN, same Curve key); returns who was renewed.

    cert-manager renews its own certificates, so this is a no-op under ``issuerRef``.
    """
    if builders.uses_cert_manager(session):
        return []
    s, ns = session["metadata"]["name"], session["metadata"]["namespace"]
    ca = await session_ca(kube, session)
    if ca is None:
        return []
    validity, before = _validity(session)
    renewed = []
    targets = [(names.SERVER, names.server_tls_secret(s)), (names.OPERATOR, names.operator_secret(s))]
    targets += [(p, names.participant_secret(p)) for p in participants]
    for identity, secret_name in targets:
        secret = await kube.read(kind="Secret", namespace=ns, name=secret_name)
        if secret is None or not due(
            builders.secret_bytes(secret, f"{identity}.crt"), now=now, renew_before_days=before
        ):
            continue
        if identity == names.SERVER:
            pair = pki.issue(ca, identity, server_names=names.server_names(s, ns), validity_days=validity)
        else:
            pair = pki.issue(ca, identity, organization=s, validity_days=validity)
        data = {f"{identity}.crt": pair.cert_pem, f"{identity}.key": pair.key_pem, "ca.crt": ca.cert_pem}
        body = {"data": {k: builders.b64(v) for k, v in data.items()}}
        await kube.patch(kind="Secret", namespace=ns, name=secret_name, body=body)
        CERTIFICATES_RENEWED.labels("server" if identity == names.SERVER else "client").inc()
        renewed.append(identity)
    return renewed
