"""fedattn run stands in local paths for a FedParticipant's volumes (fedattn.runner.volumes)."""

from __future__ import annotations

import textwrap

import pytest

from fedattn.runner import manifests, volumes

MANIFEST = textwrap.dedent("""
    apiVersion: fedattn.io/v1alpha1
    kind: FedSession
    metadata: {name: v}
    spec: {mode: learning, minParticipants: 1, model: {name: client}}
    ---
    apiVersion: fedattn.io/v1alpha1
    kind: FedParticipant
    metadata: {name: site}
    spec:
      sessionRef: v
      client: {module: "mod:make_client"}
      dataRef: {secretKeyRef: {name: creds, key: token}}
      volumes:
        - {name: claim, persistentVolumeClaim: {claimName: site-a}}
        - {name: labels, configMap: {name: labels}}
        - {name: scratch, emptyDir: {}}
        - {name: fancy, csi: {driver: example.com}}
      volumeMounts:
        - {name: claim, mountPath: /data, subPath: train}
        - {name: labels, mountPath: /labels}
        - {name: scratch, mountPath: /tmp/scratch}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: labels}
    data: {classes.txt: "benign\\nmalignant\\n"}
    ---
    apiVersion: v1
    kind: Secret
    metadata: {name: creds}
    stringData: {token: s3cret}
""")


def test_each_volume_kind_maps_to_a_local_directory(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    bundle = manifests.load(path)
    assert bundle.private["site"] == {"data": "s3cret"}
    mounts = volumes.mounts(bundle, "site", bundle.participant_spec("site"), workdir=tmp_path / "run")
    assert mounts["claim"] == tmp_path / "volumes" / "site-a" / "train"
    assert (mounts["labels"] / "classes.txt").read_text() == "benign\nmalignant\n"
    assert mounts["scratch"].is_dir() and mounts["scratch"].is_relative_to(tmp_path / "run")


def test_a_volume_a_local_run_cannot_stand_in_for_says_so(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.replace("- {name: scratch, mountPath: /tmp/scratch}",
                                     "- {name: fancy, mountPath: /fancy}"))
    bundle = manifests.load(path)
    with pytest.raises(manifests.ManifestError, match=r"spec.volumes 'fancy'.*not \['csi'\]"):
        volumes.mounts(bundle, "site", bundle.participant_spec("site"), workdir=tmp_path / "run")
    path.write_text(MANIFEST.replace("- {name: labels, mountPath: /labels}", "- {name: nope, mountPath: /nope}"))
    bundle = manifests.load(path)
    with pytest.raises(manifests.ManifestError, match=r"spec\.volumeMounts: 'nope' names no volume"):
        volumes.mounts(bundle, "site", bundle.participant_spec("site"), workdir=tmp_path / "run")
