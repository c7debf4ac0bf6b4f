"""``fedattn participant``: join a session, contribute, report (the participant image's entrypoint).

Private data stays in this process: in learning mode the client (``--client MODULE:FACTORY``, the
user's code, else the built-in digits client) reads it from ``--data-file`` / ``--volume`` paths (a
mounted ConfigMap/Secret key and volume mounts in a cluster); the attention prompt is read from
``--prompt-file``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from fedattn import logs
from fedattn.aggregator.client import AggregatorClient
from fedattn.api.spec import SessionSpec
from fedattn.client import Client, Context, load_factory
from fedattn.client.digits import DigitsClient
from fedattn.coordinator.client import CoordinatorClient, identity_from_dir
from fedattn.participant.heartbeat import Heartbeat, heartbeat_policy
from fedattn.participant.joining import SessionNotReady, join_when_ready
from fedattn.participant.learner import BYZANTINE, run_learning
from fedattn.resilience import Policy

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", required=True, help="coordinator API URL (https://HOST:PORT)")
    parser.add_argument("--session", required=True, help="FedSession name")
    parser.add_argument("--name", required=True, help="this participant's FedParticipant name (= certificate CN)")
    parser.add_argument("--pki-dir", type=Path, required=True,
                        help="directory with ca.crt, NAME.crt, NAME.key, NAME.curve.pub/.sec")
    parser.add_argument("--prompt-file", type=Path, help="private prompt slice (attention mode)")
    parser.add_argument("--data-file", type=Path, help="private data (dataRef) handed to the client factory")
    parser.add_argument("--client", help="learning: the client factory MODULE:FUNCTION (docs/byom.md); "
                        "default: the built-in digits client")
    parser.add_argument("--volume", action="append", default=[], metavar="NAME=PATH",
                        help="a volume mount handed to the client factory (repeatable)")
    parser.add_argument("--result-file", type=Path, help="write this participant's own report here as JSON")
    parser.add_argument("--heartbeat-seconds", type=float, default=2.0)
    parser.add_argument("--wait-seconds", type=float, default=600.0,
                        help="wait this long for the coordinator and the session to be there to join"
                             " (the operator passes spec.startTimeoutSeconds)")
    parser.add_argument("--simulate-byzantine", choices=BYZANTINE,
                        help="TESTING ONLY: send sign-flipped, scaled updates (spec.simulation)")
    parser.add_argument("--simulate-scale", type=float,
                        help="scale of --simulate-byzantine (required with it: spec.simulation.scale)")
    parser.add_argument("--log-level", default="INFO")


def _contribute(
    args: argparse.Namespace, joined: dict[str, Any], spec: SessionSpec, client: CoordinatorClient
) -> dict[str, Any]:
    identity = identity_from_dir(args.pki_dir, args.name)
    aggregator = joined["aggregator"]
    policy = client.policy
    beats = CoordinatorClient(
        base_url=args.coordinator, identity=identity, policy=heartbeat_policy(policy, interval=args.heartbeat_seconds)
    )
    with (
        Heartbeat(beats, session=args.session, participant=args.name, interval=args.heartbeat_seconds) as beat,
        AggregatorClient(
            endpoint=aggregator["endpoint"],
            server_public=aggregator["public_key"].encode(),
            public=identity.curve_public.read_bytes(),
            secret=identity.curve_secret.read_bytes(),
            session=args.session,
            name=args.name,
            timeout_seconds=policy.timeout_seconds,
        ) as channel,
    ):
        idle = spec.round_timeout_seconds * 2 + policy.timeout_seconds
        if spec.mode == "learning":
            return run_learning(
                channel,
                client=_client(args, joined, spec),
                spec=spec,
                name=args.name,
                session_over=lambda: beat.session_over,
                idle_timeout_seconds=idle,
                rehello_seconds=policy.timeout_seconds,
                byzantine=(args.simulate_byzantine, args.simulate_scale) if args.simulate_byzantine
                else None,
            )
        from fedattn.participant.attender import run_attention

        if args.prompt_file is None:
            raise SystemExit("fedattn participant: attention mode needs --prompt-file with this participant's slice")
        return run_attention(
            channel,
            spec=spec,
            name=args.name,
            participants=joined["participants"],
            prompt=args.prompt_file.read_text(),
            logits_file=args.result_file.with_suffix(".npz") if args.result_file else None,
        )


def volumes(pairs: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` arguments as a mapping; SystemExit naming a malformed one."""
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"fedattn participant: --volume {pair!r} must be NAME=PATH")
        out[name] = Path(path)
    return out


def _client(args: argparse.Namespace, joined: dict[str, Any], spec: SessionSpec) -> Client:
    """The learning client: the user's factory called with this participant's context (the spec as
    the defaulted manifest dict a user reads), else the built-in digits client."""
    context = Context(
        participant=args.name,
        session=args.session,
        index=joined["index"],
        parts=len(joined["participants"]),
        data_file=args.data_file,
        volumes=volumes(args.volume),
        node_config={**(joined.get("node") or {}), "participant": args.name, "index": joined["index"],
                     "parts": len(joined["participants"])},
        spec=spec.to_manifest(),
    )
    if args.client is None:
        return DigitsClient(context, spec=spec)
    return load_factory(args.client)(context)


def run(args: argparse.Namespace) -> int:
    logs.configure("participant", level=args.log_level)
    if args.simulate_byzantine and args.simulate_scale is None:
        raise SystemExit("fedattn participant: --simulate-byzantine needs --simulate-scale (spec.simulation.scale)")
    identity = identity_from_dir(args.pki_dir, args.name)
    client = CoordinatorClient(base_url=args.coordinator, identity=identity)
    try:
        joined = join_when_ready(client, session=args.session, participant=args.name, wait_seconds=args.wait_seconds)
    except SessionNotReady as exc:
        raise SystemExit(f"fedattn participant: {exc}") from None
    spec = SessionSpec.from_manifest(joined["spec"])  # NB: the one parse of the spec in this process
    client.policy = Policy.from_spec(spec.resilience)
    ctx = {"session": args.session, "participant": args.name}
    log.info("joined as participant %d of %d", joined["index"] + 1, len(joined["participants"]), extra=ctx)
    result = _contribute(args, joined, spec, client)
    if args.result_file:
        args.result_file.parent.mkdir(parents=True, exist_ok=True)
        args.result_file.write_text(json.dumps(result, indent=2, default=str))
    # NB: only the summary that is safe to share goes to the coordinator; never text or token ids.
    client.leave(args.session, args.name, {k: v for k, v in result.items() if k in SHAREABLE})
    log.info("done: %s", {k: result.get(k) for k in ("reason", "rounds")}, extra=ctx)
    return 0


#: Result keys a participant reports to the coordinator (its text and logits stay local).
SHAREABLE = ("rounds", "examples", "loss", "final_accuracy", "final_evaluation", "reason", "kv_bytes", "syncs",
             "sync_p50_ms", "sync_p99_ms", "prefill_seconds", "decode_seconds")
