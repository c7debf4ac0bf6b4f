"""The built-in models as one flat float32 parameter vector: what travels on the wire is that vector.

``softmax`` is multinomial logistic regression; ``mlp`` adds one ReLU hidden layer. Both read their
tensors as views into the flat vector, so training and aggregation never copy between layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedattn.api.spec import ModelSpec, SessionSpec


@dataclass(frozen=True)
class Architecture:
    """Tensor shapes, in the order they are laid out in the flat vector."""

    name: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes)

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """Views of ``flat`` shaped as the model's tensors (no copy)."""
        if flat.shape != (self.size,):
            raise ValueError(f"{self.name} needs {self.size} parameters, got shape {flat.shape}")
        out, offset = [], 0
        for shape in self.shapes:
            n = int(np.prod(shape))
            out.append(flat[offset : offset + n].reshape(shape))
            offset += n
        return out


def architecture(model: ModelSpec | None, *, features: int, classes: int) -> Architecture:
    """The architecture a session's ``spec.model`` names; a learning session without one trains the
    mlp (NB: the schema gives ``model`` no default, since an attention session names its own GGUF)."""
    model = model or SessionSpec.from_manifest({"mode": "learning", "model": {"name": "mlp"}}).model
    assert model is not None  # NB: set just above; tells the type checker
    name = model.name
    if name == "softmax":
        return Architecture(name, ((features, classes), (classes,)))
    if name == "mlp":
        hidden = model.hidden_units
        if hidden < 1:
            raise ValueError(f"model.hiddenUnits must be >= 1, got {hidden}")
        return Architecture(name, ((features, hidden), (hidden,), (hidden, classes), (classes,)))
    raise ValueError(f"unknown model {name!r} for learning mode; choose softmax or mlp")


def init_params(arch: Architecture, *, seed: int) -> np.ndarray:
    """He-initialised weights, zero biases; the same seed gives every process the same start."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(arch.size, dtype=np.float32)
    for tensor in arch.views(flat):
        if tensor.ndim == 2:
            tensor[...] = rng.normal(0.0, np.sqrt(2.0 / tensor.shape[0]), tensor.shape)
    return flat


def _forward(arch: Architecture, flat: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    tensors = arch.views(flat)
    if arch.name == "softmax":
        w, b = tensors
        return x @ w + b, None
    w1, b1, w2, b2 = tensors
    hidden = np.maximum(x @ w1 + b1, 0.0)
    return hidden @ w2 + b2, hidden


def predict(arch: Architecture, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Predicted class per row."""
    return _forward(arch, flat, x)[0].argmax(axis=1)


def accuracy(arch: Architecture, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(arch, flat, x) == y).mean())


def loss_and_grad(arch: Architecture, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy over the batch and its gradient as a flat vector (same layout as ``flat``)."""
    logits, hidden = _forward(arch, flat, x)
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
    d_logits = probs
    d_logits[np.arange(n), y] -= 1.0
    d_logits /= n
    grad = np.zeros_like(flat)
    g = arch.views(grad)
    if arch.name == "softmax":
        g[0][...] = x.T @ d_logits
        g[1][...] = d_logits.sum(axis=0)
    else:
        _, _, w2, _ = arch.views(flat)
        g[2][...] = hidden.T @ d_logits
        g[3][...] = d_logits.sum(axis=0)
        d_hidden = (d_logits @ w2.T) * (hidden > 0)
        g[0][...] = x.T @ d_hidden
        g[1][...] = d_hidden.sum(axis=0)
    return loss, grad
