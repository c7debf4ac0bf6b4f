"""A FedParticipant's data in a local run: its ``dataRef`` file and its volume mounts as local paths.

In a cluster the kubelet mounts ``spec.volumes``/``spec.volumeMounts`` and the participant gets the
mount paths; here the same names map to local directories, so one manifest runs both ways:

- ``persistentVolumeClaim: {claimName: C}``: ``volumes/C`` next to the manifest file (the claim's
  stand-in; the examples ship their sites' data there);
- ``hostPath: {path: P}``: P (relative paths from the manifest's directory);
- ``configMap`` / ``secret``: their keys from the same file, written as files (mode 0600);
- ``emptyDir``: a fresh directory in the run's workdir;
- anything else (``csi``, ...) cannot be stood in for locally, and says so.

A mount's ``subPath`` is a path inside the volume, as in a Pod.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedattn.api.spec import ParticipantSpec
from fedattn.runner.manifests import Bundle, ManifestError


def _error(participant: str, problem: str) -> ManifestError:
    return ManifestError("FedParticipant", participant, [problem])


def _materialize(doc: Mapping[str, Any], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    entries = {**(doc.get("data") or {})} if doc.get("kind") == "ConfigMap" else {}
    binary = doc.get("binaryData") or {}
    if doc.get("kind") == "Secret":
        binary = {**(doc.get("data") or {})}
        entries = {**(doc.get("stringData") or {})}
    for key, text in entries.items():
        (into / key).write_text(text)
        (into / key).chmod(0o600)
    for key, encoded in binary.items():
        (into / key).write_bytes(base64.b64decode(encoded))
        (into / key).chmod(0o600)


def _volume_root(bundle: Bundle, participant: str, volume: Mapping[str, Any], *, workdir: Path) -> Path:
    name = volume.get("name", "?")
    where = f"spec.volumes {name!r}"
    if "persistentVolumeClaim" in volume:
        return bundle.directory / "volumes" / str(volume["persistentVolumeClaim"].get("claimName"))
    if "hostPath" in volume:
        return bundle.directory / str(volume["hostPath"].get("path"))
    if "emptyDir" in volume:
        path = workdir / "volumes" / participant / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    for kind, key, field_name in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
        if key in volume:
            ref = volume[key].get(field_name)
            doc = bundle.objects.get((kind, ref))
            if doc is None:
                raise _error(participant, f"{where}: {kind} {ref!r} is not in the file")
            path = workdir / "volumes" / participant / name
            _materialize(doc, path)
            return path
    raise _error(participant, f"{where}: a local run stands in for persistentVolumeClaim, hostPath, configMap, "
                              f"secret and emptyDir volumes, not {sorted(k for k in volume if k != 'name')}")


def mounts(bundle: Bundle, participant: str, spec: ParticipantSpec, *, workdir: Path) -> dict[str, Path]:
    """Each volume mount's name -> the local directory standing in for its mount path."""
    volumes = {str(v.get("name")): v for v in spec.volumes or ()}
    out = {}
    for mount in spec.volume_mounts or ():
        if mount.name not in volumes:
            raise _error(participant, f"spec.volumeMounts: {mount.name!r} names no volume in spec.volumes "
                                      f"{sorted(volumes)}")
        root = _volume_root(bundle, participant, volumes[mount.name], workdir=workdir)
        out[mount.name] = (root / mount.sub_path) if mount.sub_path else root
    return out


def private_file(workdir: Path, participant: str, key: str) -> Path:
    """Where the local runner writes a participant's ``dataRef`` (``data``) or ``promptRef``
    (``prompt``) value; only that participant's process reads it."""
    return workdir / "private" / participant / key
