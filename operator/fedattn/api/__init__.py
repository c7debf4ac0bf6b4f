"""The FedSession and FedParticipant API: schemas (single source of truth), CRDs and validation."""

from fedattn.api.crds import build_crd, crd_files, kinds
from fedattn.api.validation import ManifestError, apply_defaults_and_validate, name_problems

__all__ = ["ManifestError", "apply_defaults_and_validate", "build_crd", "crd_files", "kinds", "name_problems"]
