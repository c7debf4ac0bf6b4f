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


def _owned(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    kopf.adopt(obj, owner=owner)
    return obj


def _validity(session: dict[str, Any]) -> tuple[int, int]:
    tls = session["spec"].get("tls") or {}
    self_signed = tls.get("selfSigned") or {}
    return int(self_signed.get("validityDays", 365)), int(self_signed.get("renewBeforeDays", 30))


async def session_ca(kube: Kube, session: dict[str, Any]) -> pki.KeyPair | None:
    meta = session["metadata"]
    secret = await kube.read("Secret", meta["namespace"], names.ca_secret(meta["name"]))
    if secret is None:
        return None
    return pki.KeyPair(builders.secret_bytes(secret, "ca.crt"), builders.secret_bytes(secret, "ca.key"))


async def ensure_session_pki(kube: Kube, session: dict[str, Any], *, owner: dict[str, Any]) -> bool:
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
        tls = await kube.read("Secret", ns, names.server_tls_secret(s))
        op = await kube.read("Secret", ns, names.operator_secret(s))
        return bool(tls and op and "tls.crt" in (tls.get("data") or {}) and "tls.crt" in (op.get("data") or {}))
    validity, _ = _validity(session)
    # NB: the CA outlives its leaves many times over, so a renewed leaf is not cut short by the CA's expiry
    ca_days = max(10 * validity, 3650)
    stored, _ = await kube.ensure(
        _owned(builders.build_ca_secret(session, pki.make_ca(f"fedattn-{s}-ca", validity_days=ca_days)), owner)
    )
    ca = pki.KeyPair(builders.secret_bytes(stored, "ca.crt"), builders.secret_bytes(stored, "ca.key"))
    server = pki.issue(ca, names.SERVER, server_names=builders.server_names(session), validity_days=validity)
    await kube.ensure(_owned(builders.build_server_tls_secret(session, ca_cert=ca.cert_pem, server=server), owner))
    await kube.ensure(_owned(_operator_secret(session, ca, validity), owner))
    return True


def _operator_secret(session: dict[str, Any], ca: pki.KeyPair, validity: int) -> dict[str, Any]:
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


async def _ensure_certificates(kube: Kube, session: dict[str, Any], *, owner: dict[str, Any]) -> None:
    s = session["metadata"]["name"]
    if not await kube.has_group_version(f"{builders.CERT_MANAGER_GROUP}/v1"):
        raise kopf.TemporaryError("spec.tls.issuerRef is set but cert-manager.io/v1 is not served", delay=60)
    server = builders.build_certificate(
        session,
        name=names.server_tls_secret(s),
        secret_name=names.server_tls_secret(s),
        common_name=names.SERVER,
        dns_names=builders.server_names(session),
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


async def operator_identity(kube: Kube, session: dict[str, Any]) -> dict[str, bytes] | None:
    """The operator's client identity for this session's coordinator (files by ``--pki-dir`` name)."""
    meta = session["metadata"]
    secret = await kube.read("Secret", meta["namespace"], names.operator_secret(meta["name"]))
    return None if secret is None else builders.identity_files(secret, names.OPERATOR)


async def ensure_participant(
    kube: Kube,
    participant: dict[str, Any],
    session: dict[str, Any],
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
        await kube.delete(kind, namespace, name)  # NB: already gone (or never made) is fine


async def _patch_allowlist(kube: Kube, namespace: str, session: str, body: dict[str, Any]) -> bool:
    try:
        await kube.patch("ConfigMap", namespace, names.allowlist(session), body)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def due(cert_pem: bytes, *, now: dt.datetime, renew_before_days: int) -> bool:
    """Whether a certificate is within ``renew_before_days`` of expiry (pure)."""
    return pki.not_after(cert_pem) - now <= dt.timedelta(days=renew_before_days)


async def renew_due(kube: Kube, session: dict[str, Any], participants: list[str], *, now: dt.datetime) -> list[str]:
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
        secret = await kube.read("Secret", ns, secret_name)
        if secret is None or not due(
            builders.secret_bytes(secret, f"{identity}.crt"), now=now, renew_before_days=before
        ):
            continue
        if identity == names.SERVER:
            pair = pki.issue(ca, identity, server_names=builders.server_names(session), validity_days=validity)
        else:
            pair = pki.issue(ca, identity, organization=s, validity_days=validity)
        data = {f"{identity}.crt": pair.cert_pem, f"{identity}.key": pair.key_pem, "ca.crt": ca.cert_pem}
        await kube.patch("Secret", ns, secret_name, {"data": {k: builders.b64(v) for k, v in data.items()}})
        CERTIFICATES_RENEWED.labels("server" if identity == names.SERVER else "client").inc()
        renewed.append(identity)
    return renewed
