"""Our GGUF tokenizer (tokenizers BPE + jinja2 template) against transformers' reading of the same file."""

from __future__ import annotations

import pytest

from fedattn.attention.gguf_model import default_model_path
from fedattn.attention.tokenizer import load_tokenizer

TEXTS = [
    "Hello world",
    "In 1871 the lighthouse, painted red in 1902; cost $12,345.67!",
    "  multiple   spaces\n\nnewlines\ttabs  ",
    "Unicode: café naïve 日本語 emoji 🙂",
    "<|im_start|>user\nHi<|im_end|>\n",
    "don't you'll I'M x=3.14159*2**10",
]


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer()


@pytest.fixture(scope="module")
def hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    path = default_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(ours, hf_tokenizer, text):
    assert ours.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    ],
)
def test_chat_template_matches_transformers(ours, hf_tokenizer, messages):
    text = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.render_chat(messages) == text
    assert ours.encode_chat(messages) == hf_tokenizer.encode(text, add_special_tokens=False)


def test_control_tokens_are_single_ids_and_digits_are_split(ours):
    assert ours.encode("<|im_start|>") == [1]
    assert ours.encode("<|im_end|>") == [2]
    assert len(ours.encode("1902")) == 4
    # no BOS is added, and the default system turn comes from the template
    ids = ours.encode_chat([{"role": "user", "content": "hi"}])
    assert ids[0] == 1 and "You are a helpful AI assistant" in ours.decode(ids)


def test_decode_round_trips_text(ours):
    for text in TEXTS[:4]:
        assert ours.decode(ours.encode(text)) == text
