"""Who holds which prompt token: the global prompt, its owners and the shared public prefix.

Owners are participant indices in prompt order; -1 marks the shared public prefix, which every
participant holds at the same global positions (the first ``n_prefix`` tokens). The last
participant is the publisher: it holds the question and the chat template's generation prompt.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from fedattn.attention.tokenizer import ChatTokenizer

PREFIX_OWNER = -1
_PLACEHOLDER = "\x00fedattn-content\x00"


class SharedPrefix(StrEnum):
    """What public text is replicated to every participant (``spec.sharedPrefix``)."""

    NONE = "none"  # nothing: the first participant owns the template header
    SINK = "sink"  # token 0 only, the attention sink of small models
    TEMPLATE = "template"  # everything the chat template writes before the user content


@dataclass(frozen=True)
class PromptLayout:
    token_ids: np.ndarray  # (L,) int64
    owners: np.ndarray  # (L,) int64, PREFIX_OWNER for the shared prefix
    n_prefix: int
    n_participants: int

    @property
    def prefix_ids(self) -> np.ndarray:
        return self.token_ids[: self.n_prefix]

    def positions_of(self, participant: int) -> np.ndarray:
        return np.flatnonzero(self.owners == participant).astype(np.int64)

    def ids_of(self, participant: int) -> np.ndarray:
        return self.token_ids[self.owners == participant]


def split_layout(token_ids, *, n_prefix: int, boundaries: list[int]) -> PromptLayout:
    """Split one prompt: tokens [0, n_prefix) are shared, participant i owns [b_{i-1}, b_i) after that.

    ``boundaries`` are the token indices where participants 1.. start (``spec.split.boundaries``).
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    edges = [n_prefix, *boundaries, ids.shape[0]]
    if n_prefix < 0 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(
            f"split boundaries {boundaries} must be strictly increasing inside ({n_prefix}, {ids.shape[0]}) "
            "so every participant gets at least one token"
        )
    owners = np.full(ids.shape[0], PREFIX_OWNER, dtype=np.int64)
    for participant, (start, end) in enumerate(itertools.pairwise(edges)):
        owners[start:end] = participant
    return PromptLayout(ids, owners, n_prefix, len(edges) - 1)


def even_boundaries(*, start: int, end: int, n_parts: int) -> list[int]:
    """Boundaries that cut [start, end) into n_parts contiguous chunks of near-equal length."""
    if end - start < n_parts:
        raise ValueError(f"cannot split {end - start} tokens among {n_parts} participants")
    return [start + (end - start) * i // n_parts for i in range(1, n_parts)]


def template_parts(tokenizer: ChatTokenizer) -> tuple[list[int], list[int]]:
    """Token ids the chat template writes before and after a single user message's content."""
    rendered = tokenizer.render_chat([{"role": "user", "content": _PLACEHOLDER}], add_generation_prompt=True)
    head, tail = rendered.split(_PLACEHOLDER)
    return tokenizer.encode(head), tokenizer.encode(tail)


def shared_prefix_ids(tokenizer: ChatTokenizer, shared_prefix: SharedPrefix | str) -> list[int]:
    """The public prefix every participant holds at positions 0..n_prefix-1."""
    head, _ = template_parts(tokenizer)
    n_prefix = {SharedPrefix.NONE: 0, SharedPrefix.SINK: 1, SharedPrefix.TEMPLATE: len(head)}
    return head[: n_prefix[SharedPrefix(shared_prefix)]]


def own_token_ids(
    tokenizer: ChatTokenizer,
    text: str,
    *,
    participant: int,
    n_participants: int,
    shared_prefix: SharedPrefix | str,
) -> list[int]:
    """A participant's private token ids, computed from its own text alone.

    The first participant also holds the template header not in the shared prefix; the last (the
    publisher) also holds the generation prompt. Only the length of the result needs to leave the
    participant (to agree on global positions, see ``global_positions``).
    """
    head, tail = template_parts(tokenizer)
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError(f"participant {participant}'s text has no tokens")
    if participant == 0:
        ids = head[len(shared_prefix_ids(tokenizer, shared_prefix)) :] + ids
    if participant == n_participants - 1:
        ids = ids + tail
    return ids


def global_positions(counts: list[int], *, n_prefix: int) -> list[np.ndarray]:
    """Each participant's global positions, given every participant's token count in prompt order."""
    starts = n_prefix + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return [
        np.arange(start, start + count, dtype=np.int64) for start, count in zip(starts, counts, strict=True)
    ]


def chat_layout(
    tokenizer: ChatTokenizer, texts: list[str], *, shared_prefix: SharedPrefix | str
) -> PromptLayout:
    """One user turn whose content is the participants' texts in order; the last text is the publisher's.

    Each text is tokenized on its own (a participant tokenizes only what it holds), so the global
    prompt is the concatenation of per-participant token ids.
    """
    if not texts:
        raise ValueError("at least one participant text is needed")
    prefix = shared_prefix_ids(tokenizer, shared_prefix)
    pieces = [
        own_token_ids(tokenizer, text, participant=i, n_participants=len(texts), shared_prefix=shared_prefix)
        for i, text in enumerate(texts)
    ]
    starts = [int(p[0]) for p in global_positions([len(p) for p in pieces], n_prefix=len(prefix))]
    return split_layout(prefix + [t for p in pieces for t in p], n_prefix=len(prefix), boundaries=starts[1:])
