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

from fedattn.api import apply_defaults_and_validate


class ManifestError(ValueError):
    """A manifest file that cannot be run; the message names the document and the field."""


@dataclass
class Bundle:
    """A session with its participants and the private data each of them holds (never shared)."""

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
    def spec(self) -> dict[str, Any]:
        return self.session["spec"]

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


def _resolve(ref: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]], *, where: str) -> str:
    for kind, field_name in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
        if field_name in ref:
            name, key = ref[field_name].get("name"), ref[field_name].get("key")
            doc = objects.get((kind, name))
            if doc is None:
                raise ManifestError(f"{where}: {kind} {name!r} is not in the file")
            value = _config_value(doc, key)
            if value is None:
                raise ManifestError(f"{where}: {kind} {name!r} has no key {key!r}")
            return value
    raise ManifestError(f"{where}: needs configMapKeyRef or secretKeyRef")


def load(path: Path) -> Bundle:
    """Parse, default and validate a manifest file; raises ManifestError saying what is wrong."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: cannot read manifests: {exc}") from None
    sessions, participants, objects = [], [], {}
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict) or "kind" not in doc:
            raise ManifestError(f"{path}: document {index} is not a Kubernetes object (no kind)")
        kind = doc["kind"]
        name = (doc.get("metadata") or {}).get("name", f"#{index}")
        if kind in ("FedSession", "FedParticipant"):
            try:
                doc = apply_defaults_and_validate(kind, doc)
            except ValueError as exc:
                raise ManifestError(f"{path}: {kind} {name}: {exc}") from None
            (sessions if kind == "FedSession" else participants).append(doc)
        elif kind in ("ConfigMap", "Secret"):
            objects[(kind, name)] = doc
        else:
            raise ManifestError(f"{path}: document {index} has kind {kind!r}; expected FedSession, "
                                "FedParticipant, ConfigMap or Secret")
    if len(sessions) != 1:
        raise ManifestError(f"{path}: needs exactly one FedSession, found {len(sessions)}")
    session = sessions[0]
    session_name = session["metadata"]["name"]
    mine = [p for p in participants if p["spec"]["sessionRef"] == session_name]
    others = sorted({p["spec"]["sessionRef"] for p in participants} - {session_name})
    if others:
        raise ManifestError(f"{path}: FedParticipants refer to unknown sessions {others}")
    names = [p["metadata"]["name"] for p in mine]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: duplicate FedParticipant names in {names}")
    if len(mine) < session["spec"]["minParticipants"]:
        raise ManifestError(
            f"{path}: spec.minParticipants is {session['spec']['minParticipants']} but only {len(mine)} "
            "FedParticipants are given"
        )
    private: dict[str, dict[str, str]] = {}
    for p in mine:
        where = f"FedParticipant {p['metadata']['name']}"
        private[p["metadata"]["name"]] = {
            key: _resolve(p["spec"][ref], objects, where=f"{where} spec.{ref}")
            for key, ref in (("prompt", "promptRef"), ("data", "dataRef"))
            if p["spec"].get(ref)
        }
    if session["spec"]["mode"] == "attention":
        publisher = session["spec"].get("publisher")
        if publisher not in names:
            raise ManifestError(f"{path}: spec.publisher {publisher!r} is not one of the FedParticipants {names}")
        missing = [n for n in names if "prompt" not in private[n]]
        if missing:
            raise ManifestError(f"{path}: attention participants {missing} have no promptRef")
    return Bundle(session=session, participants=mine, private=private, directory=Path(path).resolve().parent,
                  objects=objects)
