"""Start a coordinator in the running event loop: store, control link, HTTPS API, probes, ticker.

``await serve(config)`` returns a :class:`Running` with the bound ports (port 0 picks a free one)
and ``stop()``; the ``fedattn coordinator`` command and in-process tests both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fedattn import pki
from fedattn.coordinator.api import build_app
from fedattn.coordinator.control import ControlLink
from fedattn.coordinator.metrics import Metrics
from fedattn.coordinator.service import Coordinator
from fedattn.store import Store, StoreUnavailable, backend_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    tls_cert: Path
    tls_key: Path
    tls_ca: Path
    store_dsn: str
    #: where the coordinator reaches the aggregator's ROUTER, and its Curve server public key file
    aggregator: str
    aggregator_public_key: Path
    client_curve_public: Path
    client_curve_secret: Path
    #: the aggregator endpoint participants are told to use (default: ``aggregator``)
    aggregator_advertise: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    tick_seconds: float = 0.2
    control_timeout_seconds: float = 5.0
    #: how long an acknowledged change (create, join, leave, evict) may wait for its commit before 503
    ack_timeout_seconds: float = 10.0


@dataclass
class Running:
    coordinator: Coordinator
    api_port: int
    metrics_port: int
    _resources: contextlib.AsyncExitStack

    @property
    def metrics(self) -> Metrics:
        return self.coordinator.metrics

    async def stop(self) -> None:
        """Stop listening, stop the drivers and the link, then give buffered writes time to land."""
        await self._resources.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _bound_port(runner: web.AppRunner) -> int:
    site = next(iter(runner.sites))
    return site._server.sockets[0].getsockname()[1]  # NB: aiohttp exposes no public accessor


def probes_app(coordinator: Coordinator, link: ControlLink) -> web.Application:
    """Plain HTTP ``/metrics``, ``/healthz`` (process alive), ``/readyz`` (store and link up)."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(coordinator.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        problems = []
        try:
            await asyncio.wait_for(coordinator.store.ping(), 2.0)
        except (StoreUnavailable, TimeoutError) as exc:
            problems.append(f"store: {exc or 'no answer in 2 s'}")
        if not link.up:
            problems.append(f"aggregator control link to {link.endpoint} is down")
        if problems:
            return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
        return web.Response(text="ready\n")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return app


async def _tick(coordinator: Coordinator, seconds: float) -> None:
    while True:
        coordinator.tick()
        await asyncio.sleep(seconds)


async def serve(config: Config) -> Running:
    """Open the store (migrating it), connect to the aggregator, listen; returns once serving.

    If a step fails, what was started before it is shut down again before the error propagates.
    """
    async with contextlib.AsyncExitStack() as resources:
        metrics = Metrics()
        store = Store(backend_for(config.store_dsn), registry=metrics.registry)
        await store.start()
        resources.push_async_callback(store.close)
        coordinator = Coordinator(
            store=store,
            metrics=metrics,
            aggregator={
                "endpoint": config.aggregator_advertise or config.aggregator,
                "public_key": config.aggregator_public_key.read_text().strip(),
            },
            ack_timeout_seconds=config.ack_timeout_seconds,
        )
        link = ControlLink(
            endpoint=config.aggregator,
            server_public=config.aggregator_public_key.read_bytes(),
            public=config.client_curve_public.read_bytes(),
            secret=config.client_curve_secret.read_bytes(),
            on_event=coordinator.events.on_event,
            on_status=coordinator.events.on_status,
            timeout_seconds=config.control_timeout_seconds,
        )
        resources.push_async_callback(link.close)
        coordinator.driver.link = link
        resources.push_async_callback(coordinator.close)
        await coordinator.restore()
        metrics.control_link_up.set_function(lambda: 1 if link.up else 0)
        await link.start()
        ssl_context = pki.server_ssl_context(cert=config.tls_cert, key=config.tls_key, ca=config.tls_ca)
        runners = []
        for app, host, port, ctx in (
            (build_app(coordinator), config.api_host, config.api_port, ssl_context),
            (probes_app(coordinator, link), config.metrics_host, config.metrics_port, None),
        ):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            resources.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, host, port, ssl_context=ctx).start()
            runners.append(runner)
        ticker = asyncio.create_task(_tick(coordinator, config.tick_seconds), name="coordinator-tick")
        resources.push_async_callback(_cancel, ticker)
        running = Running(coordinator, _bound_port(runners[0]), _bound_port(runners[1]), resources.pop_all())
    log.info(
        "coordinator serving HTTPS on %s:%d, probes on %s:%d",
        config.api_host,
        running.api_port,
        config.metrics_host,
        running.metrics_port,
    )
    return running
