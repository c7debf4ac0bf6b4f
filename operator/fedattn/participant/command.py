"""``fedattn participant``: join a session, contribute, report (the participant image's entrypoint).

Private data stays in this process: the learning shard is derived locally from the session spec, the
attention prompt is read from ``--prompt-file`` (a mounted ConfigMap/Secret key in a cluster).
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
from fedattn.coordinator.client import CoordinatorClient, identity_from_dir
from fedattn.participant.heartbeat import Heartbeat
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
    parser.add_argument("--data-file", type=Path, help="private data (reserved for custom trainers)")
    parser.add_argument("--result-file", type=Path, help="write this participant's own report here as JSON")
    parser.add_argument("--heartbeat-seconds", type=float, default=2.0)
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
    with (
        Heartbeat(client, session=args.session, participant=args.name, interval=args.heartbeat_seconds) as beat,
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
                spec=spec,
                name=args.name,
                index=joined["index"],
                parts=len(joined["participants"]),
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


def run(args: argparse.Namespace) -> int:
    logs.configure("participant", level=args.log_level)
    if args.simulate_byzantine and args.simulate_scale is None:
        raise SystemExit("fedattn participant: --simulate-byzantine needs --simulate-scale (spec.simulation.scale)")
    identity = identity_from_dir(args.pki_dir, args.name)
    client = CoordinatorClient(base_url=args.coordinator, identity=identity)
    joined = client.join(args.session, args.name)
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
SHAREABLE = ("rounds", "examples", "loss", "final_accuracy", "reason", "kv_bytes", "syncs",
             "sync_p50_ms", "sync_p99_ms", "prefill_seconds", "decode_seconds")
