"""kopf handlers: thin glue between watch events and the pure builders / status functions.

Everything the handlers need from outside (API client, coordinator status source, images, poll
period) comes from ``memo.config`` (:class:`Config`), set by ``fedattn operator`` or by a test.
Handlers are registered on :data:`REGISTRY` rather than kopf's global one so tests and the
benchmark run exactly these handlers and nothing else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client import ApiException

from fedattn.api import ManifestError, apply_defaults_and_validate, crds, name_problems, schema
from fedattn.api.schema import ParticipantPhase, SessionPhase
from fedattn.api.spec import ParticipantSpec, SessionSpec
from fedattn.operator import accepted, builders, credentials, names, status, trust
from fedattn.operator.kube import Kube
from fedattn.operator.metrics import PhaseCounter, measured
from fedattn.operator.objects import Participant, Session
from fedattn.operator.pod_defaults import PodDefaults
from fedattn.operator.progress import StatusSource

REGISTRY = kopf.OperatorRegistry()
SESSIONS = (schema.GROUP, schema.VERSION, crds.kinds()["FedSession"].plural)
PARTICIPANTS = (schema.GROUP, schema.VERSION, crds.kinds()["FedParticipant"].plural)
PREFIX = schema.GROUP
#: The annotation where kopf keeps the spec it last handled (see configure_settings).
HANDLED = f"{PREFIX}/last-handled-configuration"


@dataclass
class Config:
    kube: Kube
    status_source: StatusSource
    #: component (coordinator, aggregator, participant) -> image; DEFAULT_IMAGE for any not named
    images: dict[str, str] = field(default_factory=dict)
    #: ``{name, key}`` of a Secret with the DSN for sessions without ``spec.database`` (SQLite if None)
    default_database: dict[str, str] | None = None
    #: pull secrets and default resources of every session pod (the chart's values)
    pods: PodDefaults = field(default_factory=PodDefaults)
    poll_seconds: float = 10.0
    retry_seconds: float = 2.0  # how soon a handler waiting for another object tries again
    ca_wait_seconds: float = 30.0  # how long a participant waits for its session's CA before retrying
    renew_check_seconds: float = 3600.0
    #: which images a spec may name instead of ``images`` (the chart's ``imagePolicy``)
    image_policy: trust.ImagePolicy = field(default_factory=trust.ImagePolicy)
    clock: Any = field(default=lambda: dt.datetime.now(dt.UTC))
    phases: PhaseCounter = field(default_factory=PhaseCounter)
    authorities: credentials.SessionAuthorities = field(default_factory=credentials.SessionAuthorities)
    allowlists: credentials.AllowlistWriter = field(init=False)

    def __post_init__(self) -> None:
        self.allowlists = credentials.AllowlistWriter(self.kube)

    def image(self, component: str) -> str:
        return self.images.get(component) or builders.DEFAULT_IMAGE

    async def refused(self, obj: dict[str, Any], *, images: list[tuple[str, str]], refs: list) -> list[str]:
        """Why the operator will not run what ``obj`` asks for (images, mounted Secrets/ConfigMaps);
        TemporaryError while a referenced object does not exist yet."""
        own = {self.image(c) for c in ("coordinator", "aggregator", "participant")}
        problems = [p for where, image in images if (p := self.image_policy.problem(image, where=where, own=own))]
        try:
            problems += await trust.refs_problems(self.kube, obj["metadata"]["namespace"], refs)
        except trust.RefNotReady as exc:
            raise kopf.TemporaryError(str(exc), delay=self.retry_seconds) from exc
        return problems


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """Explicit settings, so behaviour does not drift with kopf's defaults."""
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key=HANDLED.rpartition("/")[2]
    )
    # NB: a namespaced Role cannot list namespaces or CRDs cluster-wide; the operator is given its
    # namespaces explicitly and the CRDs are installed before it starts, so no scanning is needed.
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300  # NB: the API server closes each watch after this ...
    settings.watching.client_timeout = 330  # ... and we give up on a silent one a bit later
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = 600
    settings.networking.request_timeout = 60
    settings.queueing.error_delays = (1, 2, 4, 8, 16, 30)


@kopf.on.startup(registry=REGISTRY)
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure_settings(settings)


@kopf.on.login(registry=REGISTRY)
def _login(memo: Any, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf reaches the API server with the very configuration our own client uses (one source)."""
    c = memo.config.kube.api.configuration
    header = c.get_api_key_with_prefix("BearerToken") or c.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=c.host,
        ca_path=c.ssl_ca_cert,
        insecure=not c.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=c.cert_file,
        private_key_path=c.key_file,
        trust_env=settings.networking.trust_env,
    )


# NB: the index functions are async although they never await: kopf runs a sync handler on its executor,
# a thread hop per watch event that cost ~10% of the operator's CPU in the 100 x 4 benchmark profile.
@kopf.index(*SESSIONS, registry=REGISTRY)
async def fedsessions_by_name(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    """Every session by (namespace, name), from the watch kopf keeps anyway: a participant's handler
    finds its session here instead of GETting it (it GETs only one not seen yet)."""
    return {(namespace, name): _plain(body)}


@kopf.index(*PARTICIPANTS, registry=REGISTRY)
async def fedparticipants_by_session(namespace: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    """Participants by (namespace, sessionRef): a progress pass reads a session's members here instead
    of LISTing every participant of the namespace (100 sessions x 400 participants per poll)."""
    return {(namespace, (body.get("spec") or {}).get("sessionRef")): _plain(body)}


def _indexed(index: kopf.Index, key: tuple[str, str]) -> list[dict[str, Any]]:
    return list(index.get(key, []))


def _config(memo: Any) -> Config:
    return memo.config


def _plain(body: Any) -> dict[str, Any]:
    """A kopf Body as a plain dict (kopf's views are read-only mappings)."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata", {})),
        "spec": _thaw(body.get("spec", {})),
        "status": _thaw(body.get("status", {})),
    }


def _thaw(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


_TYPED = {"FedSession": SessionSpec, "FedParticipant": ParticipantSpec}


@functools.lru_cache(maxsize=4096)
def _typed_spec(kind: str, spec_json: str) -> SessionSpec | ParticipantSpec | list[str]:
    """Defaults + validation + the typed view of one spec (or its problems), memoised: the CEL pass
    costs ~10 ms and every progress pass and participant handler would otherwise repeat it for an
    unchanged spec. NB: the typed views are frozen, so one cached view can be shared."""
    manifest = {
        "apiVersion": f"{schema.GROUP}/{schema.VERSION}",
        "kind": kind,
        "metadata": {"name": "x"},
        "spec": json.loads(spec_json),
    }
    try:
        return _TYPED[kind].from_manifest(apply_defaults_and_validate(kind, manifest)["spec"])
    except ManifestError as exc:
        return exc.problems


def _typed(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    # NB: an edit of an immutable field that an API server without CEL let in is not acted on (accepted.py)
    body, _ = accepted.effective(kind, body)
    name = body["metadata"].get("name", "")
    # NB: the memoised spec pass validates under a placeholder name, so the real one is checked here
    # (a legacy API server has no CEL to refuse a FedParticipant named after a session component).
    if problems := name_problems(kind, name):
        raise ManifestError(kind, name, problems)
    spec = _typed_spec(kind, json.dumps(body.get("spec") or {}, sort_keys=True))
    if isinstance(spec, list):
        raise ManifestError(kind, name, spec)
    return {
        **{k: body[k] for k in ("apiVersion", "kind", "metadata")},
        "spec": spec,
        "status": body.get("status") or {},
    }


def _session(body: dict[str, Any]) -> Session:
    """The FedSession with its spec parsed once (schema defaults, typed); ManifestError if a rule is
    broken (old API servers that do not enforce CEL let such objects in)."""
    return _typed("FedSession", body)  # type: ignore[return-value]


def _participant(body: dict[str, Any]) -> Participant:
    """The FedParticipant with its spec parsed once, as :func:`_session`."""
    return _typed("FedParticipant", body)  # type: ignore[return-value]


def _invalid_status(
    previous: dict, exc: ManifestError, generation: int, now: dt.datetime, *, reason: str = "InvalidSpec"
) -> dict:
    seen = status.Observation(failure=(reason, "; ".join(exc.problems)))
    return {
        "phase": SessionPhase.FAILED,
        "observedGeneration": generation,
        "message": seen.failure[1],
        "conditions": status.set_condition(
            previous.get("conditions", []),
            type="Failed",
            status=True,
            reason=reason,
            message=seen.failure[1],
            now=now,
            generation=generation,
        ),
    }


def _with_database(session: Session, cfg: Config) -> Session:
    """The session as it runs: with the chart's PostgreSQL when it names none of its own."""
    if session["spec"].database is None and cfg.default_database:
        spec = {**session["spec"].to_manifest(), "database": {"secretRef": cfg.default_database}}
        session = {**session, "spec": SessionSpec.from_manifest(spec)}
    return session


def _session_children(session: Session, cfg: Config) -> list[dict[str, Any]]:
    return [
        cfg.pods.apply(builders.build_coordinator_deployment(session, image=cfg.image("coordinator"))),
        builders.build_coordinator_service(session),
        cfg.pods.apply(builders.build_aggregator_deployment(session, image=cfg.image("aggregator"))),
        builders.build_aggregator_service(session),
    ]


async def _ensure_state(cfg: Config, session: Session, *, owner: dict[str, Any]) -> None:
    """The session's claims (store, checkpoints): created once, never patched (a claim's spec is
    immutable once bound), so a restarted pod, a resumed session or a new coordinator finds its state."""
    for claim in builders.build_state_claims(session):
        kopf.adopt(claim, owner=owner)
        await cfg.kube.ensure(claim)


async def _sync_disruption_budgets(cfg: Config, session: Session, *, owner: dict[str, Any]) -> None:
    """A running session's coordinator and aggregator survive a node drain; a suspended one has none."""
    if session["spec"].suspend:
        await _delete_disruption_budgets(cfg, session)
        return
    version = await cfg.kube.disruption_budget_version()
    for component in builders.STATEFUL:
        budget = builders.build_disruption_budget(session, component=component, api_version=version)
        kopf.adopt(budget, owner=owner)
        await cfg.kube.apply(budget)


async def _delete_disruption_budgets(cfg: Config, session: Session) -> None:
    s, ns = session["metadata"]["name"], session["metadata"]["namespace"]
    for component in builders.STATEFUL:
        await cfg.kube.delete(kind="PodDisruptionBudget", namespace=ns, name=names.disruption_budget(s, component))


@kopf.on.resume(*SESSIONS, registry=REGISTRY)
@kopf.on.create(*SESSIONS, registry=REGISTRY)
@kopf.on.update(*SESSIONS, field="spec", registry=REGISTRY)
@measured("fedsessions", "reconcile")
async def reconcile_session(
    body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, memo: Any, logger: logging.Logger, **_: Any
) -> None:
    """PKI, allowlist, coordinator and aggregator Deployments + Services; suspend scales them to 0.

    Acting on a generation is what ``status.observedGeneration`` records (the status poller never
    writes it); an edit of an immutable field is refused and reported by the poller (``Stalled``)."""
    cfg = _config(memo)
    raw = _plain(body)
    generation = int(meta.get("generation") or 0)
    try:
        session = _session(raw)
    except ManifestError as exc:
        patch.status.update(_invalid_status(raw["status"], exc, generation, cfg.clock()))
        raise kopf.PermanentError(str(exc)) from exc
    refused = await cfg.refused(session, images=trust.session_images(session), refs=trust.session_refs(session))
    if refused:
        exc = ManifestError("FedSession", meta["name"], refused)
        patch.status.update(_invalid_status(raw["status"], exc, generation, cfg.clock(), reason="NotAllowed"))
        raise kopf.PermanentError(str(exc))
    _accept(patch, "FedSession", raw, session["spec"].to_manifest(), logger=logger)
    ready = await credentials.ensure_session_pki(cfg.kube, session, owner=raw, authorities=cfg.authorities)
    finished = session["status"].get("phase") in status.TERMINAL
    session = _with_database(session, cfg)
    if finished or status.deadline_failure(session, now=cfg.clock()):
        await _clean_up(cfg, session)  # NB: never (re)start a session that is over
    else:
        await _ensure_state(cfg, session, owner=raw)
        children = _session_children(session, cfg)
        for child in children:
            kopf.adopt(child, owner=raw)
        await asyncio.gather(*(cfg.kube.apply(child) for child in children))
        await _sync_disruption_budgets(cfg, session, owner=raw)
        await _reissue_earlier_runs(cfg, session)
        if generation > 1:  # NB: an update (e.g. suspend toggled): the participants' Jobs follow
            await _sync_participant_jobs(cfg, session)
    # NB: the rest of status is the progress daemon's alone; two writers would race and regress it. This
    # one field it never writes, and its writes carry the resourceVersion they read, so they cannot undo it.
    patch.status["observedGeneration"] = generation
    logger.info("session reconciled", extra={"session": meta["name"]})
    if not ready:
        raise kopf.TemporaryError("waiting for cert-manager to issue the session certificates", delay=cfg.retry_seconds)


def _accept(patch: kopf.Patch, kind: str, raw: dict[str, Any], spec: dict[str, Any], *, logger: logging.Logger) -> None:
    """Remember the spec an object is first accepted with (accepted.py); log an edit refused against it."""
    if accepted.baseline(raw) is None:
        patch.metadata.setdefault("annotations", {})[accepted.ANNOTATION] = accepted.record(kind, spec)
        return
    _, refused = accepted.effective(kind, raw)
    if refused:
        logger.warning("edit refused, running on the accepted spec: %s", refused[1], extra={"reason": refused[0]})


async def _reissue_earlier_runs(cfg: Config, session: Session) -> None:
    """A session deleted and applied again under its name is a new run (a new UID, a new CA): members
    still holding credentials and a Job of the earlier run get them issued again for this one. Members
    without credentials are the participant handler's; evicted ones stay out."""
    meta = session["metadata"]
    ns, uid = meta["namespace"], meta.get("uid", "")
    for p in _members(session, await cfg.kube.list(kind="FedParticipant", namespace=ns)):
        name = p["metadata"]["name"]
        if (p.get("status") or {}).get("phase") == ParticipantPhase.EVICTED:
            continue
        issued = await credentials.issued_for(cfg.kube, namespace=ns, participant=name)
        # NB: "" = issued by an operator that did not stamp runs yet: left alone, so an upgrade never
        # swaps the keys of a running participant
        if not issued or issued == uid:
            continue
        try:
            participant = _participant(p)
        except ManifestError:
            continue  # NB: its own handler marked it Failed; it has no credentials to renew
        await credentials.forget_run(cfg.kube, namespace=ns, participant=name)
        await credentials.ensure_participant(
            cfg.kube,
            participant,
            session,
            owner=p,
            authorities=cfg.authorities,
            allowlists=cfg.allowlists,
            ca_wait_seconds=cfg.ca_wait_seconds,
            retry_seconds=cfg.retry_seconds,
        )
        if not participant["spec"].external and not session["spec"].suspend:
            job = cfg.pods.apply(builders.build_participant_job(participant, session, image=cfg.image("participant")))
            kopf.adopt(job, owner=p)
            await cfg.kube.ensure(job)
        kopf.info(p, reason="CredentialsReissued", message=f"issued again for run {uid} of session {meta['name']}")


async def _sync_participant_jobs(cfg: Config, session: Session) -> None:
    """A suspended session has no participant Jobs (batch/v1 Jobs cannot be suspended before Kubernetes
    1.21, and they would burn their backoffLimit against a scaled-down coordinator); resuming recreates
    them for every credentialed, in-cluster, not evicted participant."""
    ns = session["metadata"]["namespace"]
    for p in _members(session, await cfg.kube.list(kind="FedParticipant", namespace=ns)):
        try:
            participant = _participant(p)
        except ManifestError:
            continue  # NB: its own handler marked it Failed; it has no credentials and no Job
        current = participant["status"]
        if participant["spec"].external or current.get("phase") == ParticipantPhase.EVICTED:
            continue
        if session["spec"].suspend:
            await cfg.kube.delete(kind="Job", namespace=ns, name=names.participant_job(p["metadata"]["name"]))
        elif current.get("credentialsSecret"):
            job = cfg.pods.apply(builders.build_participant_job(participant, session, image=cfg.image("participant")))
            kopf.adopt(job, owner=p)
            await cfg.kube.ensure(job)


async def _clean_up(cfg: Config, session: Session) -> None:
    """A finished session, per ``spec.cleanupPolicy``: ScaleDown (keep the claims: store, checkpoints),
    Keep (leave it running, e.g. to read its coordinator), Delete (scale down, delete the claims)."""
    policy = session["spec"].cleanup_policy
    if policy == "Keep":
        return
    await _delete_disruption_budgets(cfg, session)
    await _scale_down(cfg, session)
    if policy == "Delete":
        ns = session["metadata"]["namespace"]
        for claim in builders.build_state_claims(session):
            await cfg.kube.delete(kind="PersistentVolumeClaim", namespace=ns, name=claim["metadata"]["name"])


async def _scale_down(cfg: Config, session: Session) -> None:
    s, ns = session["metadata"]["name"], session["metadata"]["namespace"]
    for name in (names.coordinator(s), names.aggregator(s)):
        try:
            await cfg.kube.patch(kind="Deployment", namespace=ns, name=name, body={"spec": {"replicas": 0}})
        except ApiException as exc:
            if exc.status != 404:  # NB: a missing Deployment has nothing to scale
                raise


def _members(session: Session, participants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # NB: a raw read of listed objects, to pick the session's before parsing them one by one
    return [p for p in participants if (p.get("spec") or {}).get("sessionRef") == session["metadata"]["name"]]


async def progress_once(
    cfg: Config, body: kopf.Body, *, participants: kopf.Index, state: dict[str, Any], logger: logging.Logger
) -> None:
    """One observation of a session: deadline, TTL, certificates, coordinator status, events.

    ``participants`` is :func:`fedparticipants_by_session`. The first certificate renewal check comes one
    ``renew_check_seconds`` after the daemon starts, not at once: a session just reconciled has fresh
    certificates, and renewal works in days (``renewBeforeDays`` >= 1) while the check period is an hour,
    so reading every Secret of every session at start (6 reads a session) bought nothing.
    """
    raw = _plain(body)
    now = cfg.clock()
    try:
        session = _session(raw)
    except ManifestError:
        return  # reconcile_session has marked it Failed; nothing to observe
    _, refused = accepted.effective("FedSession", raw)
    meta, spec, previous = session["metadata"], session["spec"], session["status"]
    s, ns = meta["name"], meta["namespace"]
    if meta.get("deletionTimestamp"):
        return  # being deleted: nothing left to observe or to decide
    ttl = spec.ttl_seconds_after_finished
    if previous.get("phase") in status.TERMINAL and ttl is not None:
        age = status.age_seconds(previous.get("completedAt"), now)
        if age is not None and age >= ttl:
            logger.info("deleting finished session after its TTL", extra={"session": s})
            await cfg.kube.delete(kind="FedSession", namespace=ns, name=s)
            cfg.phases.set(ns, s, None)
            return
    failure = None if previous.get("phase") in status.TERMINAL else status.deadline_failure(session, now=now)
    members = _indexed(participants, (ns, s))
    state.setdefault("renewed_at", now)
    if (now - state["renewed_at"]).total_seconds() >= cfg.renew_check_seconds:
        renewed = await credentials.renew_due(cfg.kube, session, [p["metadata"]["name"] for p in members], now=now)
        state["renewed_at"] = now
        for who in renewed:
            kopf.info(body, reason="CertificateRenewed", message=f"reissued the certificate of {who}")
    identity = await credentials.operator_identity(cfg.kube, session)
    coordinator, error = None, ""
    if (
        identity is not None
        and not failure
        and not spec.suspend
        and previous.get("phase") not in status.TERMINAL
    ):
        try:
            coordinator = await cfg.status_source(session=session, participants=members, identity=identity)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    seen = status.Observation(
        coordinator=coordinator,
        error=error,
        certificates_ready=identity is not None,
        suspended=spec.suspend,
        participants_total=len(members),
        failure=failure,
        refused=refused,
        outputs=status.outputs(
            session=s,
            spec=spec,
            coordinator=coordinator,
            finished=(coordinator or {}).get("phase") == SessionPhase.SUCCEEDED,
        ),
    )

    def decide(previous: dict[str, Any]) -> dict[str, Any]:
        # NB: the generation reconcile last acted on, never metadata.generation: see reconcile_session
        return status.session_status(
            previous=previous, spec=spec, generation=previous.get("observedGeneration"), seen=seen, now=now
        )

    written = await _write_session_status(cfg, meta, previous, decide)
    if written is None:
        return  # the session changed meanwhile (or is being deleted): decide again on the next pass
    previous, new = written
    for kind, reason, message in status.transitions(previous, new):
        kopf.event(body, type=kind, reason=reason, message=message)
    if previous.get("phase") not in status.TERMINAL and new["phase"] in status.TERMINAL:
        await _clean_up(cfg, _with_database(session, cfg))  # NB: it just finished (or failed its deadline)
    cfg.phases.set(ns, s, new["phase"], conditions=new.get("conditions", []))
    if coordinator is not None:
        await _update_participants(cfg, session, members, coordinator.get("participant_status") or {}, now=now)


async def _update_participants(
    cfg: Config,
    session: Session,
    members: list[dict[str, Any]],
    entries: dict[str, Any],
    *,
    now: dt.datetime,
) -> None:
    ns = session["metadata"]["namespace"]
    for p in members:
        name = p["metadata"]["name"]
        previous = p.get("status") or {}
        entry = entries.get(name)
        new = status.participant_status(
            previous=previous,
            entry=entry,
            credentialed=bool(previous.get("credentialsSecret")),
            generation=previous.get("observedGeneration"),
            now=now,
        )
        if new["phase"] == ParticipantPhase.EVICTED and previous.get("phase") != ParticipantPhase.EVICTED:
            await credentials.revoke(cfg.kube, namespace=ns, session=session["metadata"]["name"], participant=name)
        new = {**previous, **new}
        if new != previous:
            await _write_status(cfg, "FedParticipant", p["metadata"], new)


async def _write_session_status(
    cfg: Config, meta: dict[str, Any], previous: dict[str, Any], decide: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Write ``decide(previous)`` as the session's status unless it is ``previous``; returns (previous, new)
    as decided, or None if the session moved on twice, changed its spec or is being deleted.

    On a conflict the observation still stands for the same spec, so it is decided once more on a fresh
    read rather than a poll period (and a coordinator round trip) later: at a session's first pass the
    conflict is the rule, with kopf's own finalizer patch.
    """
    new = decide(previous)
    if new == previous or await _write_status(cfg, "FedSession", meta, new):
        return previous, new
    fresh = await cfg.kube.read(kind="FedSession", namespace=meta["namespace"], name=meta["name"])
    if fresh is None or fresh["metadata"].get("deletionTimestamp"):
        return None
    if fresh["metadata"].get("generation") != meta.get("generation"):
        return None
    previous = fresh.get("status") or {}
    new = decide(previous)
    if new == previous or await _write_status(cfg, "FedSession", fresh["metadata"], new):
        return previous, new
    return None


async def _write_status(cfg: Config, kind: str, meta: dict[str, Any], new: dict[str, Any]) -> bool:
    """Patch ``.status`` only if the object is still the version we read (optimistic concurrency):
    a status computed from a stale read must not land on an object that moved on. False on conflict."""
    body = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": new}
    try:
        await cfg.kube.patch(kind=kind, namespace=meta["namespace"], name=meta["name"], body=body, status=True)
        return True
    except ApiException as exc:
        if exc.status in (404, 409):
            return False
        raise


async def _until_handled(body: kopf.Body, stopped: kopf.DaemonStopped, *, timeout_s: float) -> None:
    """Until kopf has handled the session once (its annotation is on the live body), ``timeout_s`` at most.

    Why: kopf patches a new session (finalizer, then the handled configuration) while its daemon starts,
    and a status written meanwhile conflicts (a re-read and a second write each, for every new session).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while HANDLED not in (body["metadata"].get("annotations") or {}) and not stopped and loop.time() < deadline:
        # NB: asyncio.sleep, not stopped.wait(): kopf re-raises the TimeoutError of a time-limited stopper
        # wait that is still pending when the operator exits, and these short waits would often be
        await asyncio.sleep(0.05)


@kopf.daemon(*SESSIONS, registry=REGISTRY, cancellation_timeout=5.0)
async def progress(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    memo: Any,
    logger: logging.Logger,
    fedparticipants_by_session: kopf.Index,
    **_: Any,
) -> None:
    """Poll the coordinator every ``poll_seconds`` while the session exists."""
    cfg = _config(memo)
    state: dict[str, Any] = {}
    run = measured("fedsessions", "progress")(progress_once)
    await _until_handled(body, stopped, timeout_s=cfg.poll_seconds)
    try:
        while not stopped:
            try:
                await run(cfg, body, participants=fedparticipants_by_session, state=state, logger=logger)
            except Exception:  # NB: keep observing; the error is logged and counted by `measured`
                logger.exception("progress pass failed", extra={"session": body["metadata"]["name"]})
            await stopped.wait(cfg.poll_seconds)
    finally:
        cfg.authorities.forget(body["metadata"].get("uid", ""))


async def _session_for(cfg: Config, participant: Participant, sessions: kopf.Index) -> Session:
    """The participant's session from :func:`fedsessions_by_name`, or read if the index has not seen it."""
    ns, ref = participant["metadata"]["namespace"], participant["spec"].session_ref
    indexed = next(iter(_indexed(sessions, (ns, ref))), None)
    found = indexed or await cfg.kube.read(kind="FedSession", namespace=ns, name=ref)
    if found is None:
        raise kopf.TemporaryError(f"FedSession {ref} not found in {ns}", delay=cfg.retry_seconds)
    try:
        return _session(found)
    except ManifestError as exc:
        raise kopf.TemporaryError(f"FedSession {ref} is invalid: {exc.problems[0]}", delay=60) from exc


@kopf.on.resume(*PARTICIPANTS, registry=REGISTRY)
@kopf.on.create(*PARTICIPANTS, registry=REGISTRY)
@measured("fedparticipants", "credentials")
async def issue_participant(
    body: kopf.Body,
    meta: kopf.Meta,
    patch: kopf.Patch,
    memo: Any,
    logger: logging.Logger,
    fedsessions_by_name: kopf.Index,
    **_: Any,
) -> None:
    """Credentials Secret + allowlist entry; an in-cluster participant also gets its Job."""
    cfg = _config(memo)
    raw = _plain(body)
    generation = int(meta.get("generation") or 0)

    def failed(exc: ManifestError, reason: str) -> kopf.PermanentError:
        conditions = status.set_condition(
            raw["status"].get("conditions", []),
            type="CertificateIssued",
            status=False,
            reason=reason,
            message="; ".join(exc.problems),
            now=cfg.clock(),
            generation=generation,
        )
        patch.status.update({"phase": ParticipantPhase.FAILED, "conditions": conditions})
        return kopf.PermanentError(str(exc))

    try:
        participant = _participant(raw)
    except ManifestError as exc:
        raise failed(exc, "InvalidSpec") from exc
    _accept(patch, "FedParticipant", raw, participant["spec"].to_manifest(), logger=logger)
    if participant["status"].get("phase") == ParticipantPhase.EVICTED:
        return  # NB: credentials of an evicted participant stay revoked across operator restarts
    refused = trust.volume_problems(participant) + await cfg.refused(
        participant, images=[("spec.image", participant["spec"].image)], refs=trust.participant_refs(participant)
    )
    if refused:
        raise failed(ManifestError("FedParticipant", meta["name"], refused), "NotAllowed")
    session = await _session_for(cfg, participant, fedsessions_by_name)
    await credentials.ensure_participant(
        cfg.kube,
        participant,
        session,
        owner=raw,
        authorities=cfg.authorities,
        allowlists=cfg.allowlists,
        ca_wait_seconds=cfg.ca_wait_seconds,
        retry_seconds=cfg.retry_seconds,
    )
    if builders.is_publisher(participant, session):
        for obj in builders.build_output_writer(participant, session):
            kopf.adopt(obj, owner=raw)
            await cfg.kube.ensure(obj)  # NB: never overwrite: the Secret may hold the text already
    if not participant["spec"].external:
        job = cfg.pods.apply(builders.build_participant_job(participant, session, image=cfg.image("participant")))
        kopf.adopt(job, owner=raw)
        await cfg.kube.ensure(job)  # NB: a Job's pod template is immutable: create once, never patch
    new = status.participant_status(
        previous=participant["status"], entry=None, credentialed=True, generation=generation, now=cfg.clock()
    )
    patch.status.update({**new, "credentialsSecret": names.participant_secret(meta["name"])})
    logger.info(
        "participant credentialed",
        extra={"session": session["metadata"]["name"], "participant": meta["name"]},
    )


@kopf.on.update(*PARTICIPANTS, field="spec", registry=REGISTRY)
@measured("fedparticipants", "edit")
async def participant_edited(
    body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, memo: Any, logger: logging.Logger, **_: Any
) -> None:
    """A spec edit: nothing a running participant can take on (its Job is immutable), but an edit of an
    immutable field is refused and said so (``Stalled``, a Warning event) until reverted."""
    cfg = _config(memo)
    raw = _plain(body)
    _, refused = accepted.effective("FedParticipant", raw)
    before = status.condition(raw["status"], "Stalled") or {}
    generation = int(meta.get("generation") or 0)
    patch.status.update(status.participant_edit(raw["status"], refused=refused, generation=generation, now=cfg.clock()))
    if refused and before.get("status") != "True":
        kopf.warn(body, reason=refused[0], message=refused[1])
    elif not refused and before.get("status") == "True":
        kopf.info(body, reason="EditReverted", message="the immutable fields are as accepted again")
    logger.info("participant spec edit %s", "refused" if refused else "taken", extra={"participant": meta["name"]})


@kopf.on.delete(*PARTICIPANTS, registry=REGISTRY)
@measured("fedparticipants", "revoke")
async def revoke_participant(body: kopf.Body, meta: kopf.Meta, memo: Any, logger: logging.Logger, **_: Any) -> None:
    """Deleting a participant revokes it at once: evicted at the coordinator (which revokes its key at
    the aggregator), allowlist entry and credentials Secret removed."""
    cfg = _config(memo)
    ref = (body.get("spec") or {}).get("sessionRef", "")  # NB: raw: a deleted object may be invalid
    extra = {"session": ref, "participant": meta["name"]}
    found = await cfg.kube.read(kind="FedSession", namespace=meta["namespace"], name=ref) if ref else None
    session = None
    if found is not None:
        try:
            session = _session(found)
        except ManifestError as exc:  # NB: revoke anyway; only the coordinator is not told
            logger.warning("session %s is invalid, not telling its coordinator: %s", ref, exc, extra=extra)
    identity = await credentials.operator_identity(cfg.kube, session) if session else None
    if session and identity:
        try:
            await cfg.status_source.evict(
                session=session, identity=identity, participant=meta["name"], reason="FedParticipant deleted"
            )
        except Exception as exc:
            logger.warning("coordinator did not take the eviction: %s", exc, extra=extra)
    await credentials.revoke(cfg.kube, namespace=meta["namespace"], session=ref, participant=meta["name"])
    logger.info("participant revoked", extra=extra)
