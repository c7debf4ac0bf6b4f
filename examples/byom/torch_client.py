"""A PyTorch model in the user's own module: what ``FedParticipant.spec.client.module`` names.

    client: {module: "torch_client:make_client"}

The factory gets the participant's :class:`fedattn.client.Context`; the site's CSV files are in the
volume mounted as ``site-data``. Parameters go out as a dict of the model's ``state_dict`` (numpy),
so the output's ``final.safetensors`` loads straight back with ``model.load_state_dict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sites
import torch
from torch import nn

torch.set_num_threads(1)  # NB: several participants share the machine in a local run


class Net(nn.Module):
    def __init__(self, features: int = 30, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def new_model() -> Net:
    torch.manual_seed(0)
    return Net()


def train(model: Net, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch: int, seed: int,
          anchor: list[torch.Tensor] | None = None, mu: float = 0.0) -> float:
    """Mini-batch SGD; with ``mu`` > 0 FedProx's proximal term pulls towards ``anchor``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for _ in range(epochs):
        for index in torch.randperm(len(ys), generator=generator).split(batch):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xs[index]), ys[index])
            if mu and anchor is not None:
                loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return float(np.mean(losses))


def test(model: Net, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
        return loss, float((logits.argmax(dim=1).numpy() == y).mean())


class TorchClient:
    def __init__(self, site: sites.Site, *, lr: float, batch: int, seed: int) -> None:
        self.site, self.lr, self.batch, self.seed = site, lr, batch, seed
        self.model = new_model()

    def get_parameters(self, config: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def set_parameters(self, parameters: list[np.ndarray]) -> None:
        keys = self.model.state_dict().keys()
        self.model.load_state_dict({k: torch.from_numpy(p) for k, p in zip(keys, parameters, strict=True)})

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]):
        self.set_parameters(parameters)
        anchor = [p.detach().clone() for p in self.model.parameters()]
        loss = train(self.model, self.site.x_train, self.site.y_train, epochs=int(config.get("local_epochs", 1)),
                     lr=self.lr, batch=self.batch, seed=self.seed + int(config["server_round"]),
                     anchor=anchor, mu=float(config.get("proximal_mu", 0.0)))
        return self.get_parameters(config), len(self.site.y_train), {"train_loss": loss}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]):
        self.set_parameters(parameters)
        loss, accuracy = test(self.model, self.site.x_test, self.site.y_test)
        return loss, len(self.site.y_test), {"accuracy": accuracy}


def make_client(context) -> TorchClient:
    training = context.spec["training"]
    return TorchClient(sites.load(context.volume("site-data")), lr=training["learningRate"],
                       batch=training["batchSize"], seed=training["seed"] + 1000 * context.index)


def centralized_baseline(contexts) -> dict[str, float]:
    """The same model and optimizer on the union of every site's data, rounds x localEpochs epochs."""
    spec = contexts[0].spec
    training = spec["training"]
    union = sites.load(*(c.volume("site-data") for c in contexts))
    model = new_model()
    train(model, union.x_train, union.y_train, epochs=spec["rounds"] * training["localEpochs"],
          lr=training["learningRate"], batch=training["batchSize"], seed=training["seed"])
    loss, accuracy = test(model, union.x_test, union.y_test)
    return {"accuracy": accuracy, "loss": loss}
