"""credentials.AllowlistWriter against the emulated API: entries that arrive together go out as one PATCH."""

from __future__ import annotations

import asyncio

import kmock
from kubernetes import client

from fedattn.operator import names
from fedattn.operator.credentials import AllowlistWriter
from fedattn.operator.kube import Kube
from operator_cluster import NAMESPACE, ApiServer, declare, stored

CONFIGMAPS = "v1/configmaps"
ALLOWLIST = names.allowlist("qa")


def _allowlist_patches(emulator: ApiServer) -> int:
    return sum(
        1
        for request in list(emulator)
        if request.action == kmock.action.UPDATE and request.resource is not None and request.name == ALLOWLIST
    )


async def test_entries_written_together_go_out_as_one_patch_and_later_writes_win() -> None:
    async with ApiServer() as emulator, kmock.Server(emulator) as server:
        declare(emulator)
        kube = Kube(client.ApiClient(client.Configuration(host=str(server.url))))
        allowlist = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": ALLOWLIST, "namespace": NAMESPACE},
        }
        await kube.apply({**allowlist, "data": {"ctl.curve.pub": "c"}})
        writer = AllowlistWriter(kube)
        writes = [{f"p{i}.curve.pub": f"k{i}"} for i in range(5)] + [{"p0.curve.pub": None}]
        results = await asyncio.gather(*(writer.patch(namespace=NAMESPACE, session="qa", data=d) for d in writes))
        assert results == [True] * 6
        assert stored(emulator, CONFIGMAPS, ALLOWLIST)["data"] == {
            "ctl.curve.pub": "c",
            **{f"p{i}.curve.pub": f"k{i}" for i in range(1, 5)},
        }
        assert _allowlist_patches(emulator) == 1
        # alone, a write goes out at once, as its own PATCH
        assert await writer.patch(namespace=NAMESPACE, session="qa", data={"p9.curve.pub": "k9"})
        assert _allowlist_patches(emulator) == 2


async def test_every_writer_learns_that_the_allowlist_does_not_exist() -> None:
    async with ApiServer() as emulator, kmock.Server(emulator) as server:
        declare(emulator)
        writer = AllowlistWriter(Kube(client.ApiClient(client.Configuration(host=str(server.url)))))
        results = await asyncio.gather(
            *(writer.patch(namespace=NAMESPACE, session="gone", data={f"p{i}": "k"}) for i in range(3))
        )
        assert results == [False, False, False]
