"""Read the manifests a user would ``kubectl apply`` and resolve them for a local run.

A file holds one FedSession, its FedParticipants, and the ConfigMaps/Secrets their ``promptRef`` /
``dataRef`` point at. Defaults and validation are the CRD schema's own (``fedattn.api``), so a
manifest that runs locally is one the API server would accept.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedattn.api import ManifestError, apply_defaults_and_validate
from fedattn.api.spec import DataRef, ParticipantSpec, SessionSpec

__all__ = ["Bundle", "ManifestError", "load"]


@dataclass
class Bundle:
    """A session with its participants and the private data each of them holds (never shared).

    The manifests stay dicts (they are what the coordinator is sent, and tests edit them before a
    run); :attr:`spec` and :meth:`participant_spec` are their typed views.
    """

    session: dict[str, Any]
    participants: list[dict[str, Any]]
    private: dict[str, dict[str, str]] = field(default_factory=dict)
    #: the manifest file's directory: user modules, PVC stand-ins and model files are found from it
    directory: Path = field(default_factory=Path.cwd)
    #: the ConfigMaps and Secrets in the file, by (kind, name): volumes of those kinds are made of them
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.session["metadata"]["name"]

    @property
    def spec(self) -> SessionSpec:
        return SessionSpec.from_manifest(self.session)

    def participant_spec(self, name: str) -> ParticipantSpec:
        """The typed spec of the FedParticipant ``name``; KeyError if the bundle has none."""
        for manifest in self.participants:
            if manifest["metadata"]["name"] == name:
                return ParticipantSpec.from_manifest(manifest)
        raise KeyError(f"no FedParticipant {name!r} in session {self.name}")

    @property
    def participant_names(self) -> list[str]:
        return [p["metadata"]["name"] for p in self.participants]


def _config_value(doc: dict[str, Any], key: str) -> str | None:
    if doc.get("kind") == "Secret":
        if key in (doc.get("stringData") or {}):
            return doc["stringData"][key]
        if key in (doc.get("data") or {}):
            return base64.b64decode(doc["data"][key]).decode()
        return None
    return (doc.get("data") or {}).get(key)


def _file_error(path: Path, problem: str) -> ManifestError:
    return ManifestError("manifest file", str(path), [problem])


def _resolve(ref: DataRef, objects: dict[tuple[str, str], dict[str, Any]], *, path: Path, where: str) -> str:
    for kind, key_ref in (("ConfigMap", ref.config_map_key_ref), ("Secret", ref.secret_key_ref)):
        if key_ref is not None:
            doc = objects.get((kind, key_ref.name))
            if doc is None:
                raise _file_error(path, f"{where}: {kind} {key_ref.name!r} is not in the file")
            value = _config_value(doc, key_ref.key)
            if value is None:
                raise _file_error(path, f"{where}: {kind} {key_ref.name!r} has no key {key_ref.key!r}")
            return value
    raise _file_error(path, f"{where}: needs configMapKeyRef or secretKeyRef")


def load(path: Path) -> Bundle:
    """Parse, default and validate a manifest file; raises ManifestError saying what is wrong."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise _file_error(path, f"cannot read manifests: {exc}") from None
    sessions, participants, objects = [], [], {}
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict) or "kind" not in doc:
            raise _file_error(path, f"document {index} is not a Kubernetes object (no kind)")
        kind = doc["kind"]
        name = (doc.get("metadata") or {}).get("name", f"#{index}")
        if kind in ("FedSession", "FedParticipant"):
            try:
                doc = apply_defaults_and_validate(kind, doc)
            except ManifestError as exc:
                raise _file_error(path, str(exc)) from None
            (sessions if kind == "FedSession" else participants).append(doc)
        elif kind in ("ConfigMap", "Secret"):
            objects[(kind, name)] = doc
        else:
            raise _file_error(path, f"document {index} has kind {kind!r}; expected FedSession, "
                                    "FedParticipant, ConfigMap or Secret")
    if len(sessions) != 1:
        raise _file_error(path, f"needs exactly one FedSession, found {len(sessions)}")
    session = sessions[0]
    spec = SessionSpec.from_manifest(session)
    session_name = session["metadata"]["name"]
    typed = [(p, ParticipantSpec.from_manifest(p)) for p in participants]
    mine = [p for p, t in typed if t.session_ref == session_name]
    others = sorted({t.session_ref for _, t in typed} - {session_name})
    if others:
        raise _file_error(path, f"FedParticipants refer to unknown sessions {others}")
    names = [p["metadata"]["name"] for p in mine]
    if len(set(names)) != len(names):
        raise _file_error(path, f"duplicate FedParticipant names in {names}")
    if len(mine) < spec.min_participants:
        raise _file_error(
            path, f"spec.minParticipants is {spec.min_participants} but only {len(mine)} FedParticipants are given"
        )
    private: dict[str, dict[str, str]] = {}
    for p, t in typed:
        if t.session_ref != session_name:
            continue
        name = p["metadata"]["name"]
        where = f"FedParticipant {name}"
        refs = (("prompt", "promptRef", t.prompt_ref), ("data", "dataRef", t.data_ref))
        private[name] = {
            key: _resolve(ref, objects, path=path, where=f"{where} spec.{field_name}")
            for key, field_name, ref in refs
            if ref is not None
        }
    if spec.mode == "attention":
        if spec.publisher not in names:
            raise _file_error(path, f"spec.publisher {spec.publisher!r} is not one of the FedParticipants {names}")
        missing = [n for n in names if "prompt" not in private[n]]
        if missing:
            raise _file_error(path, f"attention participants {missing} have no promptRef")
    return Bundle(session=session, participants=mine, private=private, directory=Path(path).resolve().parent,
                  objects=objects)
