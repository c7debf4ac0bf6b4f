"""``fedattn operator``: kopf with explicit settings, plus one plain-HTTP port for /healthz and /metrics.

Standalone by default (one active replica, the chart's Recreate strategy); ``--peering NAME`` turns
on kopf's peering for several replicas (needs kopf's KopfPeering CRD). Images, the default
database Secret, pull secrets and default resources of session pods come from the environment the Helm
chart sets.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading

import kopf
from aiohttp import web
from kubernetes import client, config
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fedattn import logs
from fedattn.operator.handlers import REGISTRY, Config
from fedattn.operator.kube import CONCURRENCY, Kube
from fedattn.operator.pod_defaults import PodDefaults
from fedattn.operator.progress import CoordinatorStatus
from fedattn.operator.trust import ImagePolicy

log = logging.getLogger("fedattn.operator")

IMAGE_ENV = {
    "coordinator": "FEDATTN_COORDINATOR_IMAGE",
    "aggregator": "FEDATTN_AGGREGATOR_IMAGE",
    "participant": "FEDATTN_PARTICIPANT_IMAGE",
}


def configure(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="namespace to watch (repeatable); default: $POD_NAMESPACE or 'default'",
    )
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (needs a ClusterRole)")
    parser.add_argument("--health-address", default="0.0.0.0:8080", help="HOST:PORT of /healthz and /metrics")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--peering", default=None, help="kopf peering name (several replicas); standalone if unset")
    parser.add_argument("--poll-seconds", type=float, default=10.0, help="how often each session's coordinator is read")


def _kube_configuration() -> client.Configuration:
    """In-cluster service account first, then $KUBECONFIG / ~/.kube/config (as kubectl does)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONCURRENCY
    return configuration


def build_config(args: argparse.Namespace, env: dict[str, str] | os._Environ = os.environ) -> Config:
    images = {component: env[var] for component, var in IMAGE_ENV.items() if env.get(var)}
    database = None
    if env.get("FEDATTN_DEFAULT_DATABASE_SECRET"):
        database = {
            "name": env["FEDATTN_DEFAULT_DATABASE_SECRET"],
            "key": env.get("FEDATTN_DEFAULT_DATABASE_SECRET_KEY") or "dsn",
        }
    return Config(
        kube=Kube(client.ApiClient(_kube_configuration())),
        status_source=CoordinatorStatus(),
        images=images,
        default_database=database,
        image_policy=ImagePolicy.from_env(env),
        pods=PodDefaults.from_env(env),
        poll_seconds=args.poll_seconds,
    )


async def _serve_health(address: str, ready: threading.Event) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if ready.is_set() else web.Response(status=503, text="starting\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", healthz), web.get("/metrics", metrics)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = address.rpartition(":")
    await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
    return runner


async def _main(args: argparse.Namespace, cfg: Config, namespaces: list[str]) -> None:
    ready = threading.Event()
    runner = await _serve_health(args.health_address, ready)
    log.info("operator starting", extra={"reason": f"namespaces={namespaces or 'all'}"})
    try:
        await kopf.operator(
            registry=REGISTRY,
            memo=kopf.Memo(config=cfg),
            namespaces=namespaces,
            clusterwide=args.all_namespaces,
            standalone=args.peering is None,
            peering_name=args.peering,
            ready_flag=ready,
        )
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    logs.configure("operator", level=args.log_level)
    namespaces = [] if args.all_namespaces else (args.namespace or [os.environ.get("POD_NAMESPACE", "default")])
    asyncio.run(_main(args, build_config(args), namespaces))
    return 0
