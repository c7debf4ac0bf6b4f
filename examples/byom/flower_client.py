"""A Flower NumPyClient, written as in Flower's quickstart-pytorch, run by fedattn unchanged.

    client: {module: "flower_client:client_fn"}

The class below is what a Flower user already has: ``get_weights``/``set_weights`` over the model's
state dict (positional lists), ``fit`` and ``evaluate`` returning Flower's tuples. fedattn never
imports flwr: with flwr installed the class subclasses Flower's ``NumPyClient``, without it it is a
plain class of the same shape. ``client_fn`` returns the NumPyClient itself (not ``.to_client()``).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import sites
import torch
from torch import nn

try:
    from flwr.client import NumPyClient
except ImportError:  # NB: fedattn needs only the shape, not Flower
    NumPyClient = object

torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(30, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def get_weights(net):
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


def set_weights(net, parameters):
    params_dict = zip(net.state_dict().keys(), parameters, strict=True)
    state_dict = OrderedDict({k: torch.tensor(v) for k, v in params_dict})
    net.load_state_dict(state_dict, strict=True)


def train(net, trainloader, epochs, lr):
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for features, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(features), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (len(trainloader) * epochs)


def test(net, testloader):
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for features, labels in testloader:
            outputs = net(features)
            loss += criterion(outputs, labels).item() * len(labels)
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    total = len(testloader.dataset)
    return loss / total, correct / total


class FlowerClient(NumPyClient):
    def __init__(self, net, trainloader, valloader, local_epochs, lr):
        self.net = net
        self.trainloader = trainloader
        self.valloader = valloader
        self.local_epochs = local_epochs
        self.lr = lr

    def get_parameters(self, config):
        return get_weights(self.net)

    def fit(self, parameters, config):
        set_weights(self.net, parameters)
        train_loss = train(self.net, self.trainloader, self.local_epochs, self.lr)
        return get_weights(self.net), len(self.trainloader.dataset), {"train_loss": train_loss}

    def evaluate(self, parameters, config):
        set_weights(self.net, parameters)
        loss, accuracy = test(self.net, self.valloader)
        return loss, len(self.valloader.dataset), {"accuracy": accuracy}


def load_data(*directories, batch_size: int, seed: int):
    """DataLoaders over one site's CSV files (or the union of several)."""
    site = sites.load(*directories)
    train_set = torch.utils.data.TensorDataset(torch.from_numpy(site.x_train), torch.from_numpy(site.y_train))
    test_set = torch.utils.data.TensorDataset(torch.from_numpy(site.x_test), torch.from_numpy(site.y_test))
    generator = torch.Generator().manual_seed(seed)
    return (torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator),
            torch.utils.data.DataLoader(test_set, batch_size=64))


def new_net() -> Net:
    torch.manual_seed(0)
    return Net()


def client_fn(context):
    training = context.spec["training"]
    trainloader, valloader = load_data(context.volume("site-data"), batch_size=training["batchSize"],
                                       seed=training["seed"] + context.index)
    return FlowerClient(new_net(), trainloader, valloader, training["localEpochs"], training["learningRate"])


def centralized_baseline(contexts) -> dict[str, float]:
    """The same network and optimizer on the union of the sites' data, rounds x localEpochs epochs."""
    spec = contexts[0].spec
    training = spec["training"]
    trainloader, valloader = load_data(*(c.volume("site-data") for c in contexts),
                                       batch_size=training["batchSize"], seed=training["seed"])
    net = new_net()
    train(net, trainloader, spec["rounds"] * training["localEpochs"], training["learningRate"])
    loss, accuracy = test(net, valloader)
    return {"accuracy": accuracy, "loss": loss}
