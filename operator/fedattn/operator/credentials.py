"""Session PKI and participant credentials as Secrets: issue, renew before expiry, revoke.

Key material comes from :mod:`fedattn.pki` (pure, PEM bytes out); Secrets are created only when
absent, so a retried handler never replaces a key a pod already uses. With ``spec.tls.issuerRef``
the certificates are cert-manager ``Certificate`` objects instead and only the Curve keys (which
cert-manager does not do) are ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

import kopf
from kubernetes.client import ApiException

from fedattn import pki
from fedattn.operator import builders, names
from fedattn.operator.kube import Kube
from fedattn.operator.metrics import CERTIFICATES_RENEWED
from fedattn.operator.objects import Participant, Session


class SessionAuthorities:
    """The CA of every session this operator process has ensured, by session uid; participants wait here.

    Why: a session and its participants arrive together. A participant handler that ran before its
    session's CA existed used to fail, be retried by kopf ``retry_seconds`` later (a patch and a watch
    event per try) and read the CA Secret again: 240-650 failed tries and ~950 Secret reads for 100
    sessions x 4 participants. The Secret stays the source of truth (after a restart, or a session
    this process has not seen yet); keyed by uid, a session recreated under the same name never gets
    its predecessor's CA.
    """

    def __init__(self) -> None:
        self._cas: dict[str, pki.KeyPair] = {}
        self._published = asyncio.Condition()

    async def publish(self, uid: str, ca: pki.KeyPair) -> None:
        async with self._published:
            self._cas[uid] = ca
            self._published.notify_all()

    def forget(self, uid: str) -> None:
        """The session is gone (its daemon stopped): drop its key."""
        self._cas.pop(uid, None)

    async def wait(self, uid: str, *, timeout_s: float) -> pki.KeyPair | None:
        """The session's CA once published, or None after ``timeout_s`` (then read the Secret)."""
        async with self._published:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._published.wait_for(lambda: uid in self._cas), timeout_s)
            return self._cas.get(uid)


class AllowlistWriter:
    """Merge patches of a session's allowlist ConfigMap, the entries that arrive while one is in flight
    merged into the next (a group commit: no timer, no added latency when alone).

    Why: every participant adds its key with a PATCH of the same ConfigMap; the participants of a
    session are reconciled together, so under load their PATCHes queue behind each other anyway.
    """

    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        self._waiting: dict[tuple[str, str], list[tuple[dict[str, str | None], asyncio.Future[bool]]]] = {}
        self._writing: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # NB: the loop keeps only weak references to tasks

    async def patch(self, *, namespace: str, session: str, data: dict[str, str | None]) -> bool:
        """Merge ``data`` (None deletes a key) into the allowlist; False if it does not exist."""
        key = (namespace, session)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((data, done))
        if key not in self._writing:
            self._writing.add(key)
            task = asyncio.create_task(self._write(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await done

    async def _write(self, key: tuple[str, str]) -> None:
        try:
            while batch := self._waiting.pop(key, []):
                merged: dict[str, str | None] = {}
                for data, _ in batch:
                    merged.update(data)  # NB: in arrival order, so the later of two writes to a key wins
                try:
                    outcome = await _patch_allowlist(self._kube, key[0], key[1], {"data": merged})
                except Exception as exc:  # NB: every writer in the batch sees the failure
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for _, done in batch:
                    if not done.done():
                        done.set_result(outcome)
        finally:
            self._writing.discard(key)


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


async def ensure_session_pki(
    kube: Kube, session: Session, *, owner: dict[str, Any], authorities: SessionAuthorities
) -> bool:
    """CA, server certificate, operator client certificate, Curve keys and allowlist; True when ready.

    Under cert-manager, ready means cert-manager has written the server and operator Secrets. The CA is
    published to ``authorities`` as soon as it and the allowlist exist: that is all a participant needs.
    """
    s, ns = session["metadata"]["name"], session["metadata"]["namespace"]

    async def allowlist() -> None:
        curve, _ = await kube.ensure(
            _owned(
                builders.build_curve_secret(session, server=pki.curve_keypair(), control=pki.curve_keypair()),
                owner,
            )
        )
        control_pub = builders.secret_bytes(curve, f"{names.CONTROL_CLIENT}.curve.pub")
        await kube.ensure(_owned(builders.build_allowlist(session, {names.CONTROL_CLIENT: control_pub}), owner))

    # NB: independent chains run side by side: each write waits for etcd's commit (200-900 ms on a busy
    # disk in the benchmark), so a session's depth matters more than its count of writes
    if builders.uses_cert_manager(session):
        await asyncio.gather(allowlist(), _ensure_certificates(kube, session, owner=owner))
        tls, op = await asyncio.gather(
            kube.read(kind="Secret", namespace=ns, name=names.server_tls_secret(s)),
            kube.read(kind="Secret", namespace=ns, name=names.operator_secret(s)),
        )
        return bool(tls and op and "tls.crt" in (tls.get("data") or {}) and "tls.crt" in (op.get("data") or {}))
    validity, _ = _validity(session)
    # NB: the CA outlives its leaves many times over, so a renewed leaf is not cut short by the CA's expiry
    ca_days = max(10 * validity, 3650)
    _, (stored, _) = await asyncio.gather(
        allowlist(),
        kube.ensure(
            _owned(builders.build_ca_secret(session, pki.make_ca(f"fedattn-{s}-ca", validity_days=ca_days)), owner)
        ),
    )
    ca = pki.KeyPair(builders.secret_bytes(stored, "ca.crt"), builders.secret_bytes(stored, "ca.key"))
    await authorities.publish(session["metadata"]["uid"], ca)
    server = pki.issue(ca, names.SERVER, server_names=names.server_names(s, ns), validity_days=validity)
    await asyncio.gather(
        kube.ensure(_owned(builders.build_server_tls_secret(session, ca_cert=ca.cert_pem, server=server), owner)),
        kube.ensure(_owned(_operator_secret(session, ca, validity), owner)),
    )
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
    authorities: SessionAuthorities,
    allowlists: AllowlistWriter,
    ca_wait_seconds: float = 30.0,
    retry_seconds: float = 2.0,
) -> bytes:
    """The participant's credentials Secret (and Certificate under cert-manager) plus its allowlist
    entry; returns its Curve public key. Waits up to ``ca_wait_seconds`` for the session's CA to be
    published, then reads its Secret; raises TemporaryError while the session's PKI is not there."""
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
        uid = session["metadata"]["uid"]
        ca = await authorities.wait(uid, timeout_s=ca_wait_seconds) or await session_ca(kube, session)
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
    # NB: stamped with the session run, so a session deleted and applied again re-issues it (issued_for)
    secret["metadata"]["annotations"] = {names.SESSION_UID: session["metadata"].get("uid", "")}
    stored, _ = await kube.ensure(_owned(secret, owner))
    public = builders.secret_bytes(stored, f"{p}.curve.pub")
    if not await allowlists.patch(namespace=ns, session=s, data={names.curve_public_key(p): public.decode()}):
        raise kopf.TemporaryError(f"allowlist of session {s} does not exist yet", delay=retry_seconds)
    return public


async def issued_for(kube: Kube, *, namespace: str, participant: str) -> str | None:
    """The UID of the session run the participant's credentials were issued for; None without any."""
    secret = await kube.read(kind="Secret", namespace=namespace, name=names.participant_secret(participant))
    if secret is None:
        return None
    return ((secret.get("metadata") or {}).get("annotations") or {}).get(names.SESSION_UID, "")


async def forget_run(kube: Kube, *, namespace: str, participant: str) -> None:
    """Delete what a participant got for an earlier run of its session (credentials signed by a CA that
    is gone, a finished Job), so they are issued again for the current run."""
    for kind, name in (
        ("Secret", names.participant_secret(participant)),
        ("Certificate", names.participant_certificate(participant)),
        ("Secret", names.participant_certificate(participant)),
        ("Job", names.participant_job(participant)),
    ):
        await kube.delete(kind=kind, namespace=namespace, name=name)


async def revoke(kube: Kube, *, namespace: str, session: str, participant: str) -> None:
    """Remove the participant's allowlist entry (the aggregator rescans it) and its credentials."""
    await _patch_allowlist(kube, namespace, session, {"data": {names.curve_public_key(participant): None}})
    await forget_run(kube, namespace=namespace, participant=participant)  # NB: already gone is fine


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
