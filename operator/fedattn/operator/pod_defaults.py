"""What the installation puts on every session pod: pull secrets for a private registry, and compute
resources for a container whose spec names none (so no coordinator, aggregator or participant runs as
BestEffort, the first pod a node evicts under memory pressure).

The Helm chart sets both (values ``imagePullSecrets`` and ``sessionPods.resources``) through the operator's
environment; the builders stay unaware of them, and a session's own ``resources`` always win. Without the
environment (a local run), nothing is added.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

PULL_SECRETS_ENV = "FEDATTN_IMAGE_PULL_SECRETS"
RESOURCES_ENV = "FEDATTN_POD_RESOURCES"
COMPONENTS = ("coordinator", "aggregator", "participant")
RESOURCE_KEYS = ("requests", "limits")


@dataclass(frozen=True)
class PodDefaults:
    image_pull_secrets: tuple[str, ...] = ()
    #: component -> ResourceRequirements ({requests, limits}) for containers without their own
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PodDefaults:
        """Parse the chart's variables: ``FEDATTN_IMAGE_PULL_SECRETS`` (comma-separated Secret names) and
        ``FEDATTN_POD_RESOURCES`` (JSON: component -> {requests, limits}). Raises ValueError naming the
        variable and what is wrong with it."""
        secrets = tuple(s.strip() for s in env.get(PULL_SECRETS_ENV, "").split(",") if s.strip())
        raw = env.get(RESOURCES_ENV, "").strip() or "{}"
        try:
            resources = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{RESOURCES_ENV} is not JSON: {exc}") from exc
        if not isinstance(resources, dict):
            raise ValueError(f"{RESOURCES_ENV} must be a JSON object of component -> resources, not {raw!r}")
        for component, value in resources.items():
            if component not in COMPONENTS:
                raise ValueError(f"{RESOURCES_ENV}: unknown component {component!r}; expected one of {COMPONENTS}")
            if not isinstance(value, dict) or set(value) - set(RESOURCE_KEYS):
                raise ValueError(f"{RESOURCES_ENV}.{component} must be an object with requests and/or limits")
        return cls(image_pull_secrets=secrets, resources=MappingProxyType(resources))

    def apply(self, workload: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``workload`` (a Deployment or Job from ``builders``) with these defaults on its pod
        template. The component comes from its ``app.kubernetes.io/component`` label."""
        out = copy.deepcopy(workload)
        component = out["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = out["spec"]["template"]["spec"]
        if self.image_pull_secrets:
            pod["imagePullSecrets"] = [{"name": name} for name in self.image_pull_secrets]
        default = self.resources.get(component)
        for container in pod["containers"]:
            if default and not container.get("resources"):  # NB: the spec's own resources win
                container["resources"] = copy.deepcopy(dict(default))
        return out
