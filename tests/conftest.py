"""Shared fixtures: one real PostgreSQL server per test session (see tests/postgres.py).

- ``postgres_server``: the :class:`PostgresServer` (stop/start it for outage tests; it is restarted on
  the same port, so DSNs stay valid).
- ``postgres_dsn``: DSN of a database created once for the whole test session.
- ``fresh_database``: DSN of a new empty database for one test (dropped afterwards).

and the attention tests' real model, loaded once per test session (~1 s and ~0.5 GB each time):

- ``model``: the packaged SmolLM2 GGUF (:func:`fedattn.attention.gguf_model.load_model`);
- ``tokenizer``: its chat tokenizer.

Nothing is skipped: without PostgreSQL binaries these fixtures fail and say how to install them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from postgres import MISSING, PostgresServer, find_bin_dir

# NB: no wall-clock bound in a unit test: hypothesis' default 200 ms deadline per example failed
# test_wire's round trip at load 50 while every example was correct.
settings.register_profile("fedattn", deadline=None)
settings.load_profile("fedattn")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(MISSING, pytrace=False)
    server = PostgresServer(bin_dir=bin_dir)
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database("fedattn")


@pytest.fixture(scope="session")
def model():
    from fedattn.attention.gguf_model import load_model

    return load_model()


@pytest.fixture(scope="session")
def tokenizer():
    from fedattn.attention.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def fresh_database(postgres_server: PostgresServer) -> Iterator[str]:
    dsn = postgres_server.create_database()
    yield dsn
    postgres_server.drop_database(dsn)
