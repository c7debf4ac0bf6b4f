"""``fedattn coordinator``: the HTTPS control plane as a process (the coordinator image's entrypoint)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from fedattn import logs
from fedattn.coordinator.server import Config, serve

DSN_ENV = "FEDATTN_DATABASE_DSN"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-host", default="0.0.0.0", help="bind address of the HTTPS API")
    parser.add_argument("--api-port", type=int, default=8443, help="HTTPS API port (0: any)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="bind address of /metrics, /healthz, /readyz")
    parser.add_argument("--metrics-port", type=int, default=9101, help="plain-HTTP probes port (0: any)")
    parser.add_argument("--tls-cert", type=Path, required=True, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, required=True, help="server private key (PEM)")
    parser.add_argument("--tls-ca", type=Path, required=True, help="CA that signs client certificates (PEM)")
    parser.add_argument(
        "--store",
        default=os.environ.get(DSN_ENV),
        help=f"postgresql://... or sqlite:////abs/path.db (default: ${DSN_ENV})",
    )
    parser.add_argument("--aggregator", required=True, help="aggregator ROUTER endpoint, e.g. tcp://aggregator:5555")
    parser.add_argument(
        "--aggregator-advertise", help="aggregator endpoint given to participants (default: --aggregator)"
    )
    parser.add_argument("--aggregator-public-key", type=Path, required=True, help="aggregator Curve public key file")
    parser.add_argument("--client-curve-public", type=Path, required=True, help="our Curve public key file")
    parser.add_argument("--client-curve-secret", type=Path, required=True, help="our Curve secret key file")
    parser.add_argument("--log-level", default="INFO")


def config_from(args: argparse.Namespace) -> Config:
    if not args.store:
        raise SystemExit(f"fedattn coordinator: give --store DSN or set {DSN_ENV}")
    return Config(
        api_host=args.api_host,
        api_port=args.api_port,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        store_dsn=args.store,
        aggregator=args.aggregator,
        aggregator_advertise=args.aggregator_advertise,
        aggregator_public_key=args.aggregator_public_key,
        client_curve_public=args.client_curve_public,
        client_curve_secret=args.client_curve_secret,
    )


async def _main(config: Config) -> None:
    running = await serve(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()


def run(args: argparse.Namespace) -> int:
    logs.configure("coordinator", level=args.log_level)
    asyncio.run(_main(config_from(args)))
    return 0
