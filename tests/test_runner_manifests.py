"""The local runner reads the same manifests a user applies, and says precisely what is wrong."""

import textwrap
from pathlib import Path

import pytest

from fedattn.runner import manifests

EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml"))


def _write(tmp_path, text):
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    return path


SESSION = """
apiVersion: fedattn.io/v1alpha1
kind: FedSession
metadata: {name: s}
spec: {mode: learning, minParticipants: 2, rounds: 2}
"""


def _participant(name, session="s", extra=""):
    return f"""---
apiVersion: fedattn.io/v1alpha1
kind: FedParticipant
metadata: {{name: {name}}}
spec: {{sessionRef: {session}{extra}}}
"""


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(path):
    bundle = manifests.load(path)
    assert len(bundle.participants) >= bundle.spec.min_participants


def test_defaults_come_from_the_crd_schema(tmp_path):
    bundle = manifests.load(_write(tmp_path, SESSION + _participant("a") + _participant("b")))
    assert bundle.spec.round_timeout_seconds == 300
    assert bundle.spec.resilience.retries == 3
    assert bundle.participant_names == ["a", "b"]


def test_private_prompt_is_resolved_from_configmap_and_secret(tmp_path):
    text = """
    apiVersion: fedattn.io/v1alpha1
    kind: FedSession
    metadata: {name: s}
    spec: {mode: attention, minParticipants: 2, publisher: b}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: cm}
    data: {prompt: "hello from a"}
    ---
    apiVersion: v1
    kind: Secret
    metadata: {name: sec}
    data: {prompt: "aGVsbG8gZnJvbSBi"}
    """
    text = textwrap.dedent(text)
    text += _participant("a", extra=", promptRef: {configMapKeyRef: {name: cm, key: prompt}}")
    text += _participant("b", extra=", promptRef: {secretKeyRef: {name: sec, key: prompt}}")
    bundle = manifests.load(_write(tmp_path, text))
    assert bundle.private == {"a": {"prompt": "hello from a"}, "b": {"prompt": "hello from b"}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: [unclosed", "cannot read manifests"),
        ("- just a list\n", "not a Kubernetes object"),
        (SESSION + _participant("a"), "minParticipants is 2 but only 1"),
        (SESSION + _participant("a") + _participant("a"), "duplicate FedParticipant names"),
        (SESSION + _participant("a") + _participant("b", session="other"), "unknown sessions ['other']"),
        (SESSION.replace("learning", "dreaming") + _participant("a") + _participant("b"), "mode"),
        (SESSION.replace("rounds: 2", "rounds: -1") + _participant("a") + _participant("b"), "rounds"),
        (SESSION + "---" + SESSION, "exactly one FedSession, found 2"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "kind 'Pod'"),
        (
            SESSION.replace("learning", "attention").replace("rounds: 2", "publisher: zed")
            + _participant("a") + _participant("b"),
            "publisher",
        ),
    ],
)
def test_bad_manifests_are_explained(tmp_path, text, message):
    with pytest.raises(manifests.ManifestError) as err:
        manifests.load(_write(tmp_path, text))
    assert message in str(err.value)


def test_missing_configmap_is_named(tmp_path):
    text = SESSION + _participant("a", extra=", dataRef: {configMapKeyRef: {name: nope, key: k}}") + _participant("b")
    with pytest.raises(manifests.ManifestError, match="ConfigMap 'nope' is not in the file"):
        manifests.load(_write(tmp_path, text))
