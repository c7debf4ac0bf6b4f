"""The coordinator's HTTPS API against authenticated clients that send what JSON allows but nobody needs."""

from __future__ import annotations

import pytest

from test_coordinator_api import as_, manifests


@pytest.mark.parametrize("depth", [65, 2_000, 200_000])
async def test_deeply_nested_json_is_a_400_with_a_json_body(stack, depth):
    operator = as_(stack.running, stack.pki_dir, "operator")
    assert (await operator.call("POST", "/v1/sessions", manifests("s")))[0] == 201
    nested = ("[" * depth + "]" * depth).encode()
    for who, path in (
        ("operator", "/v1/sessions"),
        ("alice", "/v1/sessions/s/participants/alice/leave"),
    ):
        raw = b'{"manifest": ' + nested + b"}" if who == "operator" else b'{"result": {"x": ' + nested + b"}}"
        status, body = await as_(stack.running, stack.pki_dir, who).call("POST", path, raw=raw)
        assert (status, body["error"]) == (400, "malformed"), (who, status, body)
        assert "nests deeper than 64 levels" in body["message"]
    assert (await operator.call("GET", "/v1/sessions/s"))[0] == 200  # still serving
