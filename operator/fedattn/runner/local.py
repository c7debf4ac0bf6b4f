"""``fedattn run``: one session, all components as local processes, fresh PKI, SQLite store.

The runner plays the operator's part: it mints credentials, starts the aggregator and coordinator,
creates the session through the coordinator's API (as ``operator``), starts one participant process
per FedParticipant with only its own private data, and follows the session's status to the end.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedattn import pki
from fedattn.api.schema import SessionPhase
from fedattn.coordinator.client import CoordinatorClient
from fedattn.coordinator.command import DSN_ENV
from fedattn.resilience import Policy
from fedattn.runner import volumes
from fedattn.runner.manifests import Bundle
from fedattn.runner.processes import Supervisor, free_port, wait_ready

TERMINAL_PHASES = (SessionPhase.SUCCEEDED, SessionPhase.FAILED)


@dataclass(frozen=True)
class Endpoints:
    aggregator: str
    aggregator_metrics: int
    coordinator: str
    coordinator_metrics: int


@dataclass
class LocalSession:
    """A running local session: its directory, processes and an admin client."""

    bundle: Bundle
    workdir: Path
    supervisor: Supervisor
    endpoints: Endpoints
    admin: CoordinatorClient
    store_dsn: str

    def status(self) -> dict[str, Any]:
        return self.admin.status(self.bundle.name)


def _write_allowlist(root: Path, identities: dict[str, pki.Paths], names: list[str]) -> Path:
    allow = root / "allow"
    allow.mkdir(exist_ok=True)
    for name in names:
        (allow / f"{name}.curve.pub").write_bytes(identities[name].curve_public.read_bytes())
    return allow


@dataclass(frozen=True)
class Prepared:
    """A run's credentials and addresses, made before any process starts."""

    identities: dict[str, pki.Paths]
    allow_dir: Path
    endpoints: Endpoints


def prepare(bundle: Bundle, *, workdir: Path) -> Prepared:
    """Mint the session PKI and the aggregator's allowlist, and pick loopback ports."""
    pki_dir = workdir / "pki"
    identities = pki.write_session_pki(
        pki_dir, session=bundle.name, participants=bundle.participant_names, server_names=["127.0.0.1", "localhost"]
    )
    allow = _write_allowlist(pki_dir, identities, [pki.CONTROL_CLIENT, *bundle.participant_names])
    for name in bundle.participant_names:  # NB: each participant process gets only its own keys
        identities[name] = pki.move_identity(identities[name], participant_pki_dir(workdir, name))
    endpoints = Endpoints(
        aggregator=f"tcp://127.0.0.1:{free_port()}",
        aggregator_metrics=free_port(),
        coordinator=f"https://127.0.0.1:{free_port()}",
        coordinator_metrics=free_port(),
    )
    return Prepared(identities, allow, endpoints)


def start(
    bundle: Bundle,
    *,
    workdir: Path,
    supervisor: Supervisor,
    store_dsn: str | None = None,
    participants: list[str] | None = None,
    prepared: Prepared | None = None,
    output_dir: Path | None = None,
) -> LocalSession:
    """Start aggregator and coordinator, create the session, start the participants (all of them, or
    only ``participants``: tests drive the others by hand). With ``prepared`` given, its aggregator is
    the caller's to run (tests run one in-process to inspect what crosses the wire). Sessions with
    ``spec.output`` write under ``output_dir`` (default ``WORKDIR/output``)."""
    run_aggregator = prepared is None
    prepared = prepared or prepare(bundle, workdir=workdir)
    identities, endpoints = prepared.identities, prepared.endpoints
    store_dsn = store_dsn or f"sqlite:///{(workdir / 'store.sqlite3').resolve()}"
    server = identities["server"]
    if run_aggregator:
        aggregator = supervisor.start(
            "aggregator",
            [
                "aggregator",
                "--bind", endpoints.aggregator,
                "--curve-secret", str(server.curve_secret),
                "--curve-public", str(server.curve_public),
                "--allow-dir", str(prepared.allow_dir),
                "--metrics-host", "127.0.0.1",
                "--metrics-port", str(endpoints.aggregator_metrics),
                "--checkpoint-dir", str(workdir / "checkpoints"),
                "--output-dir", str(output_dir or workdir / "output"),
                "--model-dir", str(bundle.directory),
            ],
        )
        wait_ready(f"http://127.0.0.1:{endpoints.aggregator_metrics}/readyz", proc=aggregator)
    control = identities[pki.CONTROL_CLIENT]
    api_port = endpoints.coordinator.rsplit(":", 1)[1]
    coordinator = supervisor.start(
        "coordinator",
        [
            "coordinator",
            "--api-host", "127.0.0.1",
            "--api-port", api_port,
            "--metrics-host", "127.0.0.1",
            "--metrics-port", str(endpoints.coordinator_metrics),
            "--tls-cert", str(server.cert),
            "--tls-key", str(server.key),
            "--tls-ca", str(server.ca),
            "--aggregator", endpoints.aggregator,
            "--aggregator-public-key", str(server.curve_public),
            "--client-curve-public", str(control.curve_public),
            "--client-curve-secret", str(control.curve_secret),
        ],
        env={DSN_ENV: store_dsn},  # NB: a DSN may hold a password: env, not the command line
    )
    wait_ready(f"http://127.0.0.1:{endpoints.coordinator_metrics}/readyz", proc=coordinator)
    admin = CoordinatorClient(
        base_url=endpoints.coordinator,
        identity=identities["operator"],
        policy=Policy.from_spec(bundle.spec.resilience),
    )
    admin.create_session(bundle.session, bundle.participants)
    session = LocalSession(bundle, workdir, supervisor, endpoints, admin, store_dsn)
    for name in bundle.participant_names if participants is None else participants:
        start_participant(session, name)
    return session


def participant_pki_dir(workdir: Path, name: str) -> Path:
    """A participant's own PKI directory: ``ca.crt`` and its identity, no other key."""
    return workdir / "pki" / "participants" / name


def start_participant(session: LocalSession, name: str) -> None:
    """One participant process; its private prompt/data goes to a file only it reads, its volume
    mounts map to local directories (fedattn.runner.volumes), and the manifest's directory is on its
    ``PYTHONPATH`` (where a user's client module sits next to the manifest, as in examples/byom)."""
    args = [
        "participant",
        "--coordinator", session.endpoints.coordinator,
        "--session", session.bundle.name,
        "--name", name,
        "--pki-dir", str(participant_pki_dir(session.workdir, name)),
        "--result-file", str(session.workdir / "results" / f"{name}.json"),
    ]
    spec = session.bundle.participant_spec(name)
    if spec.simulation is not None and spec.simulation.byzantine:
        args += ["--simulate-byzantine", spec.simulation.byzantine, "--simulate-scale", str(spec.simulation.scale)]
    if spec.client is not None:
        args += ["--client", spec.client.module]
    for mount, path in volumes.mounts(session.bundle, name, spec, workdir=session.workdir).items():
        args += ["--volume", f"{mount}={path}"]
    for key, value in session.bundle.private.get(name, {}).items():
        path = volumes.private_file(session.workdir, name, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        path.chmod(0o600)
        args += [f"--{key}-file", str(path)]
    # NB: N participants share this machine's cores; BLAS pools of all cores each would oversubscribe
    # them many times over (and spin-wait), so each participant gets its share.
    threads = str(max(1, (os.cpu_count() or 1) // len(session.bundle.participant_names)))
    blas = {"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    path = os.pathsep.join(p for p in (str(session.bundle.directory), os.environ.get("PYTHONPATH")) if p)
    session.supervisor.start(f"participant-{name}", args, env={**blas, "PYTHONPATH": path})


def follow(
    session: LocalSession,
    *,
    on_status: Callable[[dict[str, Any]], None],
    poll_seconds: float = 0.5,
    timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """Poll the session's status until it is Succeeded or Failed; returns the last status."""
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    servers = [c for n, c in session.supervisor.children.items() if n in ("aggregator", "coordinator")]
    while True:
        for proc in servers:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        status = session.status()
        on_status(status)
        if status.get("phase") in TERMINAL_PHASES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"session {session.bundle.name} still {status.get('phase')} after {timeout_seconds}s")
        time.sleep(poll_seconds)


def wait_participants(session: LocalSession, *, timeout_seconds: float = 60.0) -> dict[str, int | None]:
    """Give participants time to report and exit after the session ends; their exit codes."""
    deadline = time.monotonic() + timeout_seconds
    codes: dict[str, int | None] = {}
    for name in session.bundle.participant_names:
        child = session.supervisor.children.get(f"participant-{name}")
        if child is None:
            continue
        proc = child.popen
        try:
            codes[name] = proc.wait(max(0.0, deadline - time.monotonic()))
        except Exception:
            codes[name] = None
    return codes


def read_results(session: LocalSession) -> dict[str, dict[str, Any]]:
    """What each participant wrote to its local result file (local mode only; never sent anywhere)."""
    out = {}
    for name in session.bundle.participant_names:
        path = session.workdir / "results" / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out
