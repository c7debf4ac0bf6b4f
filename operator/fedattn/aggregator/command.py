"""``fedattn aggregator``: the ZMQ data plane as a process (the aggregator image's entrypoint)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from fedattn import logs
from fedattn.aggregator.server import DEFAULT_MAX_MESSAGE_BYTES, Aggregator, Hooks
from fedattn.learning import session as learning_session


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default="tcp://0.0.0.0:5555", help="ZMQ ROUTER endpoint")
    parser.add_argument("--curve-secret", type=Path, required=True, help="server Curve secret key file (Z85)")
    parser.add_argument("--curve-public", type=Path, required=True, help="server Curve public key file (Z85)")
    parser.add_argument(
        "--allow-dir",
        type=Path,
        required=True,
        help="directory of NAME.curve.pub client keys, rescanned every second",
    )
    parser.add_argument(
        "--metrics-host", default="0.0.0.0", help="bind address of /metrics, /healthz, /readyz"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=9102, help="port of the plain-HTTP probes (0: any)"
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest frame the socket accepts; a larger one is dropped and its sender disconnected",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="checkpoints of learning sessions with checkpoint.everyRounds > 0 (resumed on restart)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="learning sessions with spec.output write their models and metrics under DIR/SUBPATH",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="where spec.model.initial.path is looked up (default: the working directory)",
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    logs.configure("aggregator", level=args.log_level)
    aggregator = Aggregator(
        bind=args.bind,
        server_public=args.curve_public.read_bytes(),
        server_secret=args.curve_secret.read_bytes(),
        allow_dir=args.allow_dir,
        max_message_bytes=args.max_message_bytes,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        checkpoint_dir=args.checkpoint_dir,
        output_dir=args.output_dir,
        model_dir=args.model_dir,
        hooks=Hooks(initial_params=learning_session.initial_params, evaluator=learning_session.evaluator),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: aggregator.stop())
    try:
        aggregator.serve()
    finally:
        aggregator.close()
    return 0
