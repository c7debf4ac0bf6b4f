"""The adversarial suite: an authenticated participant attacks a real aggregator and coordinator.

Attackers hold real allowlisted Curve keys and real client certificates of the session CA: the
perimeter (unauthenticated peers, foreign CAs) is tested elsewhere; here the question is what an
insider can do. Fixtures:

- ``agg``: an aggregator served in a thread (``test_aggregator_server.Harness``), the test is the
  coordinator's control link; ``carol`` is the attacker, ``alice``/``bob`` are honest.
- ``stack``: coordinator (HTTPS, SQLite store) + aggregator, with ``dave`` allowlisted at the
  aggregator but a member of no session (an outsider with a valid key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedattn import pki
from fedattn.aggregator.server import Aggregator, Hooks
from fedattn.coordinator.server import Running, serve
from test_aggregator_server import Harness
from test_coordinator_api import P_SIZE, PARTICIPANTS, config

OUTSIDER = "dave"


@dataclass
class Stack:
    running: Running
    aggregator: Aggregator
    pki_dir: Path
    outsider: str = OUTSIDER


@pytest.fixture
def agg(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def stack_pki(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    pki.write_session_pki(
        root,
        session="s",
        participants=[*PARTICIPANTS, OUTSIDER, "operator"],
        server_names=["127.0.0.1", "localhost"],
    )
    return root


@pytest.fixture
async def stack(stack_pki: Path, tmp_path: Path):
    server = pki.Paths(stack_pki, "server")
    aggregator = Aggregator(
        bind="tcp://127.0.0.1:*",
        server_public=server.curve_public.read_bytes(),
        server_secret=server.curve_secret.read_bytes(),
        allow_dir=stack_pki,
        hooks=Hooks(initial_params=lambda session, spec: np.zeros(P_SIZE, dtype=np.float32)),
        tick_seconds=0.02,
    )
    aggregator.start()
    running = await serve(config(stack_pki, aggregator, f"sqlite:///{tmp_path / 'store.db'}"))
    try:
        yield Stack(running=running, aggregator=aggregator, pki_dir=stack_pki)
    finally:
        await running.stop()
        aggregator.close()
