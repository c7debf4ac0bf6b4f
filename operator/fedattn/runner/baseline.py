"""The centralized baseline of a session on the user's model: the same model trained on the union
of every site's data, which only the local runner can do (it alone holds every participant's data).

The user's client module may define ``centralized_baseline(contexts) -> metrics`` next to its
factory; it gets every participant's :class:`fedattn.client.Context` (as the participants got them)
and returns the metrics of the model trained centrally (e.g. ``{"accuracy": 0.97}``), which the
``fedattn run --json`` summary reports against the federated figures. Without it: no baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedattn.client import Context, clean_metrics, module_hook
from fedattn.runner import volumes
from fedattn.runner.manifests import Bundle


def contexts(bundle: Bundle, *, workdir: Path) -> list[Context]:
    """Every participant's context, as its process built it (same data file and volume paths)."""
    names = bundle.participant_names
    out = []
    for index, name in enumerate(names):
        spec = bundle.participant_spec(name)
        data = volumes.private_file(workdir, name, "data")
        out.append(Context(
            participant=name,
            session=bundle.name,
            index=index,
            parts=len(names),
            data_file=data if data.exists() else None,
            volumes=volumes.mounts(bundle, name, spec, workdir=workdir),
            node_config={**(spec.node or {}), "participant": name, "index": index, "parts": len(names)},
            spec=bundle.spec.to_manifest(),
        ))
    return out


def centralized_baseline(bundle: Bundle, *, workdir: Path) -> dict[str, float] | None:
    """The client module's ``centralized_baseline`` metrics, or None when it has none."""
    client = bundle.participant_spec(bundle.participant_names[0]).client
    if client is None:
        return None
    if str(bundle.directory) not in sys.path:
        sys.path.insert(0, str(bundle.directory))  # NB: where the participants found the module too
    hook = module_hook(client.module, "centralized_baseline")
    if hook is None:
        return None
    return clean_metrics(hook(contexts(bundle, workdir=workdir)), what="centralized_baseline")
