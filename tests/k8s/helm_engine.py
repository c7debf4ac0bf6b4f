"""Helm's own engine (Helm v4 embedded in the ``helm-sdkpy`` package) driven from tests, synchronously."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import helm_sdkpy

#: The chart under test; FEDATTN_CHART points the tests at another copy (e.g. an unpacked release).
CHART = Path(os.environ.get("FEDATTN_CHART") or Path(__file__).resolve().parents[2] / "charts" / "fedattn")


def _config(kubeconfig: Path | None, namespace: str) -> helm_sdkpy.Configuration:
    return helm_sdkpy.Configuration(namespace=namespace, kubeconfig=str(kubeconfig) if kubeconfig else None)


def lint(chart: Path = CHART) -> dict[str, Any]:
    """``helm lint``: renders every template with the chart's values and checks them against the schema.

    Returns Helm's lint result; its ``Errors`` is empty/None when the chart is clean.
    """
    return asyncio.run(helm_sdkpy.Lint(_config(None, "default")).run(str(chart)))


def install(
    *, kubeconfig: Path, namespace: str, release: str, values: dict | None = None, chart: Path = CHART
) -> dict[str, Any]:
    """``helm install --create-namespace`` without waiting: there is no kubelet, pods never become ready."""
    action = helm_sdkpy.Install(_config(kubeconfig, namespace))
    return asyncio.run(
        action.run(
            release,
            str(chart),
            values=values or {},
            create_namespace=True,
            wait=False,
            timeout=120,
            disable_openapi_validation=False,
        )
    )


def upgrade(
    *, kubeconfig: Path, namespace: str, release: str, values: dict | None = None, chart: Path = CHART
) -> dict[str, Any]:
    action = helm_sdkpy.Upgrade(_config(kubeconfig, namespace))
    return asyncio.run(
        action.run(
            release,
            str(chart),
            values=values or {},
            wait=False,
            timeout=120,
            disable_openapi_validation=False,
        )
    )


def uninstall(*, kubeconfig: Path, namespace: str, release: str) -> dict[str, Any]:
    return asyncio.run(helm_sdkpy.Uninstall(_config(kubeconfig, namespace)).run(release, wait=False))
