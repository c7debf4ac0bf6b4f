"""What a FedSession or FedParticipant may point the operator at: labelled data, allowed images.

Whoever may create a FedParticipant must not gain, through the operator's own rights, more than
that: the operator mounts a Secret or ConfigMap into a participant's Job (``promptRef``, ``dataRef``,
``volumes``; hostPath and other node-level volume types are refused) or the coordinator's env
(``database.secretRef``) only when it carries the opt-in label ``fedattn.io/private-data: "true"``
and is not one of the operator's own objects (a session CA key, Curve keys, credentials); and it
runs only images the chart's ``imagePolicy`` allows. See docs/deploy.md, "Trust model".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fedattn.operator.kube import Kube

OPT_IN_LABEL = "fedattn.io/private-data"
MANAGED_BY = ("app.kubernetes.io/managed-by", "fedattn-operator")


class RefNotReady(Exception):
    """A referenced object does not exist (yet): retry later rather than fail."""


@dataclass(frozen=True)
class ImagePolicy:
    """Images a session or participant may name instead of the operator's own component images.

    ``allowed_prefixes``: image references that start with one of these (``registry.example/team/``);
    ``require_digest``: such an image must be pinned by digest (``...@sha256:<64 hex>``). The default
    allows no override at all: only the images the chart configured run.
    """

    allowed_prefixes: tuple[str, ...] = ()
    require_digest: bool = False

    @classmethod
    def from_env(cls, env: Any) -> ImagePolicy:
        """``FEDATTN_IMAGE_ALLOWED_PREFIXES`` (comma-separated) and ``FEDATTN_IMAGE_REQUIRE_DIGEST``."""
        prefixes = tuple(p.strip() for p in (env.get("FEDATTN_IMAGE_ALLOWED_PREFIXES") or "").split(",") if p.strip())
        digest = (env.get("FEDATTN_IMAGE_REQUIRE_DIGEST") or "").lower() in ("1", "true", "yes")
        return cls(allowed_prefixes=prefixes, require_digest=digest)

    def problem(self, image: str, *, where: str, own: Iterable[str]) -> str | None:
        """Why ``image`` (named at ``where``) may not run, or None; the operator's ``own`` images may."""
        if not image or image in own:
            return None
        if not any(image.startswith(p) for p in self.allowed_prefixes):
            allowed = list(self.allowed_prefixes) or "none (imagePolicy.allowedPrefixes is empty)"
            return f"{where}: image {image!r} is not allowed by the operator's imagePolicy; allowed prefixes: {allowed}"
        if self.require_digest and not _pinned(image):
            return f"{where}: image {image!r} must be pinned by digest (name@sha256:...), imagePolicy.requireDigest"
        return None


def _pinned(image: str) -> bool:
    _, _, digest = image.partition("@sha256:")
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def session_images(session: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, image) of every image a FedSession (typed spec) names."""
    spec = session["spec"]
    templates = {"coordinator": spec.coordinator, "aggregator": spec.aggregator}
    return [(f"spec.{c}.image", t.image) for c, t in templates.items() if t is not None and t.image]


def participant_refs(participant: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, kind, name) of every Secret/ConfigMap a FedParticipant (typed spec) asks to mount."""
    spec = participant["spec"]
    out = []
    for field, ref in (("promptRef", spec.prompt_ref), ("dataRef", spec.data_ref)):
        if ref is None:
            continue
        if ref.config_map_key_ref is not None:
            out.append((f"spec.{field}.configMapKeyRef", "ConfigMap", ref.config_map_key_ref.name))
        if ref.secret_key_ref is not None:
            out.append((f"spec.{field}.secretKeyRef", "Secret", ref.secret_key_ref.name))
    return out + _volume_refs(participant)


#: volume types a FedParticipant may bring (a hostPath, say, would hand it the node's files)
VOLUME_TYPES = frozenset({"persistentVolumeClaim", "emptyDir", "csi", "secret", "configMap", "projected"})
PROJECTED_SOURCES = frozenset({"secret", "configMap", "downwardAPI"})


def volume_problems(participant: dict[str, Any]) -> list[str]:
    """Volume types the operator will not mount for a FedParticipant (``spec.volumes``)."""
    problems = []
    for i, volume in enumerate(participant["spec"].volumes or ()):
        kinds = set(volume) - {"name"}
        sources = {k for src in (volume.get("projected") or {}).get("sources") or [] for k in src}
        if not kinds <= VOLUME_TYPES or not sources <= PROJECTED_SOURCES:
            bad = sorted((kinds - VOLUME_TYPES) | (sources - PROJECTED_SOURCES))
            problems.append(f"spec.volumes[{i}]: {bad} may not be mounted; allowed: {sorted(VOLUME_TYPES)}")
    return problems


def _volume_refs(participant: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, kind, name) of the Secrets/ConfigMaps ``spec.volumes`` mount (directly or projected)."""
    out = []
    for i, volume in enumerate(participant["spec"].volumes or ()):
        where = f"spec.volumes[{i}]"
        sources = [volume, *((volume.get("projected") or {}).get("sources") or [])]
        for source in sources:
            if isinstance(source.get("secret"), dict):
                secret = source["secret"]
                out.append((f"{where}.secret", "Secret", secret.get("secretName") or secret.get("name") or ""))
            if isinstance(source.get("configMap"), dict):
                out.append((f"{where}.configMap", "ConfigMap", source["configMap"].get("name") or ""))
    return out


def session_refs(session: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, kind, name) of the Secret a FedSession asks the coordinator to read (its database DSN)."""
    database = session["spec"].database
    return [("spec.database.secretRef", "Secret", database.secret_ref.name)] if database else []


def ref_problem(obj: dict[str, Any], *, where: str, kind: str) -> str | None:
    """Why the operator may not hand ``obj`` (a Secret or ConfigMap) to a pod, or None."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    name = meta.get("name")
    owned = labels.get(MANAGED_BY[0]) == MANAGED_BY[1] or any(
        (r.get("apiVersion") or "").startswith("fedattn.io/") for r in meta.get("ownerReferences") or []
    )
    if owned:
        return f"{where}: {kind} {name!r} belongs to the operator (session keys and credentials are never mounted)"
    if labels.get(OPT_IN_LABEL) != "true":
        return (
            f"{where}: {kind} {name!r} has not opted in; label it {OPT_IN_LABEL}=true to let "
            "FedParticipants and FedSessions of this namespace use it"
        )
    return None


async def refs_problems(kube: Kube, namespace: str, refs: list[tuple[str, str, str]]) -> list[str]:
    """Problems of every reference; raises :class:`RefNotReady` when one does not exist yet."""
    problems = []
    for where, kind, name in refs:
        obj = await kube.read(kind=kind, namespace=namespace, name=name)
        if obj is None:
            raise RefNotReady(f"{where}: {kind} {name!r} does not exist in {namespace}")
        if problem := ref_problem(obj, where=where, kind=kind):
            problems.append(problem)
    return problems
