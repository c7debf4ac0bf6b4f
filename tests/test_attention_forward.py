"""The numpy Llama forward pass against an independent implementation (Hugging Face transformers).

transformers loads the same GGUF itself (its own dequantizer, its own Q/K un-permutation and
``rotate_half`` RoPE, torch kernels), so agreement checks our loader, RoPE pairing, GQA, norms and MLP.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedattn.attention import forward as F
from fedattn.attention.gguf_model import default_model_path

PROMPT = [
    {
        "role": "user",
        "content": "In which year was the lighthouse on Marrow Island, built in 1871, painted red?",
    }
]

#: float32 numpy vs float32 torch over 30 layers; logits are O(10-40), so this is ~1e-5 relative.
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    return np.array(tokenizer.encode_chat(PROMPT), dtype=np.int64)


@pytest.fixture(scope="module")
def prefilled(model, prompt_ids):
    return F.prefill(model, prompt_ids)


@pytest.fixture(scope="module")
def hf_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = default_model_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    hf.eval()
    return hf


def hf_logits(hf_model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_model(torch.from_numpy(ids[None])).logits[0].numpy()


def test_config_read_from_gguf_metadata(model):
    cfg = model.config
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert (cfg.hidden_size, cfg.ffn_size, cfg.vocab_size) == (576, 1536, 49152)
    assert cfg.rope_theta == 100000.0
    # tied embeddings: the file has no output.weight
    assert model.lm_head is model.embedding


@pytest.mark.slow
def test_prefill_logits_match_transformers(prefilled, hf_model, prompt_ids):
    ours, _ = prefilled
    theirs = hf_logits(hf_model, prompt_ids)
    assert ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < LOGIT_TOLERANCE
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.slow
def test_greedy_decode_with_cache_matches_transformers_on_full_sequence(
    model, prefilled, hf_model, prompt_ids
):
    logits, cache = prefilled
    gen = F.greedy_decode(
        model, cache=cache, last_logits=logits[-1], start_position=len(prompt_ids), max_new_tokens=6
    )
    assert len(gen.tokens) == 6 and gen.step_logits.shape == (6, model.config.vocab_size)
    full = np.concatenate([prompt_ids, gen.tokens])
    theirs = hf_logits(hf_model, full)[len(prompt_ids) - 1 : -1]
    assert np.abs(gen.step_logits - theirs).max() < LOGIT_TOLERANCE
    assert gen.tokens == theirs.argmax(-1).tolist()


def test_decode_leaves_prefill_cache_reusable(model, prefilled, prompt_ids):
    logits, cache = prefilled
    lengths = [len(c) for c in cache]
    first = F.greedy_decode(
        model, cache=cache, last_logits=logits[-1], start_position=len(prompt_ids), max_new_tokens=3
    )
    assert [len(c) for c in cache] == lengths
    forced = F.greedy_decode(
        model,
        cache=cache,
        last_logits=logits[-1],
        start_position=len(prompt_ids),
        max_new_tokens=3,
        forced_tokens=first.tokens,
    )
    np.testing.assert_array_equal(forced.step_logits, first.step_logits)


def test_rope_is_a_rotation_whose_scores_depend_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 1, 1, 64)).astype(np.float32)

    def score(m, n):
        return float((F.rope(q, np.array([m]), 10000.0) * F.rope(k, np.array([n]), 10000.0)).sum())

    assert np.linalg.norm(F.rope(q, np.array([37]), 10000.0)) == pytest.approx(np.linalg.norm(q), rel=1e-6)
    assert score(5, 2) == pytest.approx(score(105, 102), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)
    # position 0 is the identity
    np.testing.assert_allclose(F.rope(q, np.array([0]), 10000.0), q)


def test_attention_with_explicit_mask_equals_attention_over_the_visible_rows(model):
    rng = np.random.default_rng(1)
    cfg = model.config
    q = rng.standard_normal((cfg.n_heads, 4, cfg.head_dim)).astype(np.float32)
    ctx = F.LayerKV(
        rng.standard_normal((cfg.n_kv_heads, 6, cfg.head_dim)).astype(np.float32),
        rng.standard_normal((cfg.n_kv_heads, 6, cfg.head_dim)).astype(np.float32),
        np.arange(6),
    )
    mask = np.zeros((4, 6), dtype=bool)
    mask[:, [1, 4]] = True
    sub = F.LayerKV(ctx.k[:, [1, 4]], ctx.v[:, [1, 4]], ctx.positions[[1, 4]])
    np.testing.assert_allclose(
        F.attend(cfg, q, ctx, mask), F.attend(cfg, q, sub, np.ones((4, 2), bool)), rtol=1e-5, atol=1e-6
    )
    # closed form for one visible key: the output is that key's value, head by head (GQA groups of 3)
    one = np.zeros((4, 6), dtype=bool)
    one[:, 2] = True
    out = F.attend(cfg, q, ctx, one).reshape(4, cfg.n_heads, cfg.head_dim)
    expected = np.repeat(ctx.v[:, 2], cfg.n_heads // cfg.n_kv_heads, axis=0)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-6)


def test_attention_rejects_bad_masks(model):
    cfg = model.config
    q = np.zeros((cfg.n_heads, 2, cfg.head_dim), np.float32)
    ctx = F.LayerKV(*(np.zeros((cfg.n_kv_heads, 3, cfg.head_dim), np.float32),) * 2, np.arange(3))
    with pytest.raises(ValueError, match="no visible key"):
        F.attend(cfg, q, ctx, np.array([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="mask shape"):
        F.attend(cfg, q, ctx, np.ones((2, 2), bool))


def test_embed_rejects_out_of_range_ids(model):
    with pytest.raises(ValueError, match="out of range"):
        F.embed(model, np.array([1, model.config.vocab_size]))
    with pytest.raises(ValueError, match="non-empty"):
        F.embed(model, np.array([], dtype=np.int64))
