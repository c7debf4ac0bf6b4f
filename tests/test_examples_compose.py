"""``kubectl apply -f examples/`` into one namespace: every example is a Kubernetes object and no two
examples, nor the children the operator makes for them, share a name.

Child names come from ``fedattn.operator.names``: every public function there of one ``session`` or one
``participant`` names a child, so a child added later is covered without touching this test.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from fedattn.operator import names

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def _children_of(owner: str) -> list[Callable[[str], str]]:
    """The name functions of ``names`` whose only argument is ``owner`` ("session" or "participant")."""
    return [
        fn
        for fn in vars(names).values()
        if inspect.isfunction(fn) and list(inspect.signature(fn).parameters) == [owner]
    ]


SESSION_CHILDREN = _children_of("session")
PARTICIPANT_CHILDREN = _children_of("participant")


def _docs() -> list[dict]:
    return [doc for path in EXAMPLES for doc in yaml.safe_load_all(path.read_text()) if doc]


def _child_names(docs: list[dict]) -> list[str]:
    out = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "FedSession":
            out += [fn(name) for fn in SESSION_CHILDREN]
        elif kind == "FedParticipant":
            out += [fn(name) for fn in PARTICIPANT_CHILDREN]
    return out


def _duplicates(items: list) -> list:
    return sorted(item for item, count in Counter(items).items() if count > 1)


def test_the_name_functions_are_found() -> None:
    assert names.coordinator in SESSION_CHILDREN and names.allowlist in SESSION_CHILDREN
    assert names.participant_job in PARTICIPANT_CHILDREN and names.participant_secret in PARTICIPANT_CHILDREN


def test_every_example_is_a_kubernetes_object() -> None:
    assert len(EXAMPLES) >= 2
    for doc in _docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc


def test_no_two_example_objects_share_a_kind_and_name() -> None:
    assert _duplicates([(d["kind"], d["metadata"]["name"]) for d in _docs()]) == []


def test_no_two_children_of_the_examples_share_a_name() -> None:
    """Children are Secrets, ConfigMaps, Services, Deployments and Jobs: a name must be unique across
    them (a Secret and a ConfigMap of the same name would be fine for the API, but not for a reader)."""
    docs = _docs()
    children = _child_names(docs)
    assert _duplicates(children) == []
    # nor does a child take the name of an object the examples create themselves (e.g. a ConfigMap)
    own = {d["metadata"]["name"] for d in docs if d["kind"] not in ("FedSession", "FedParticipant")}
    assert own.isdisjoint(children)


DNS_LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,40}[a-z0-9])?", fullmatch=True)


@given(sessions=st.sets(DNS_LABEL, min_size=1, max_size=4), participants=st.sets(DNS_LABEL, min_size=1, max_size=6))
def test_child_names_never_collide_for_distinct_owner_names(sessions: set[str], participants: set[str]) -> None:
    """Participant names are unique in a namespace (they are objects), so names derived from them alone
    cannot collide across sessions; and no session child suffix ends another child's suffix, so a session's
    children never take a participant's children's names."""
    docs = [{"kind": "FedSession", "metadata": {"name": s}} for s in sessions]
    docs += [{"kind": "FedParticipant", "metadata": {"name": p}} for p in participants]
    assert _duplicates(_child_names(docs)) == []
