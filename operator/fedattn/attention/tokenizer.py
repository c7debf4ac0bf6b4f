"""Tokenizer and chat template rebuilt from GGUF metadata (``tokenizers`` BPE + ``jinja2``).

Only the byte-level BPE vocabularies llama.cpp calls ``gpt2`` are supported. The pre-tokenizer
follows llama.cpp's per-model ``tokenizer.ggml.pre`` rule; for SmolLM (``smollm``) that is: every
digit on its own, then the GPT-2 byte-level regex. Control tokens (type 3) are registered as special
tokens so ``<|im_start|>`` in a template stays one token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from fedattn.attention.gguf_model import metadata_value, open_gguf, resolve_model_path

CONTROL_TOKEN_TYPE = 3

#: ``tokenizer.ggml.pre`` values whose pre-tokenizer is "single digits, then the GPT-2 regex"
DIGIT_SPLIT_PRE = frozenset({"smollm", "starcoder", "refact", "codeshell"})
#: ``tokenizer.ggml.pre`` values that use the plain GPT-2 regex
GPT2_PRE = frozenset({"default", "gpt2", "gpt-2"})


@dataclass(frozen=True)
class ChatTokenizer:
    """A ``tokenizers.Tokenizer`` plus the file's chat template and stop token."""

    tokenizer: Tokenizer
    chat_template: jinja2.Template | None
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of text with no BOS added (the GGUF says ``add_bos_token: false``)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise ValueError("this GGUF file has no tokenizer.chat_template")
        return self.chat_template.render(messages=messages, add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt=add_generation_prompt))


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in GPT2_PRE:
        return byte_level
    raise ValueError(f"unsupported tokenizer.ggml.pre {pre!r}")


def _template(source: str | None) -> jinja2.Template | None:
    if source is None:
        return None
    # NB: the same sandbox and whitespace rules Hugging Face applies to chat templates.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)


def load_tokenizer(path: str | Path | None = None) -> ChatTokenizer:
    """The tokenizer of a GGUF file (default: SmolLM2-135M), built once per process."""
    return _load_tokenizer_at(resolve_model_path(path).resolve())


@functools.lru_cache(maxsize=2)
def _load_tokenizer_at(path: Path) -> ChatTokenizer:
    reader = open_gguf(path)
    kind = metadata_value(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported tokenizer.ggml.model {kind!r}; only byte-level BPE ('gpt2') is")
    tokens = metadata_value(reader, "tokenizer.ggml.tokens")
    types = metadata_value(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in metadata_value(reader, "tokenizer.ggml.merges")]
    tokenizer = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=False)
    )
    tokenizer.pre_tokenizer = _pre_tokenizer(metadata_value(reader, "tokenizer.ggml.pre", "default"))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(token, normalized=False, special=True)
            for token, kind in zip(tokens, types, strict=True)
            if kind == CONTROL_TOKEN_TYPE
        ]
    )
    return ChatTokenizer(
        tokenizer=tokenizer,
        chat_template=_template(metadata_value(reader, "tokenizer.chat_template")),
        eos_token_id=metadata_value(reader, "tokenizer.ggml.eos_token_id"),
    )
