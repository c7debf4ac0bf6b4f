"""Real learning rounds over loopback: coordinator + aggregator processes, N synthetic participants.

Each synthetic participant is its own process that joins over HTTPS (mTLS), connects to the aggregator
over CurveZMQ and answers every ``model`` with a P-float32 ``update`` (no training, so the round is all
transport, validation and aggregation). Printed per (N, P):

- ``round_seconds``: median of (closed_at - opened_at) over the rounds after the first, from the store;
- ``raw_transfer_seconds``: the same bytes a round moves (N models out, N updates in) pushed through a
  plain loopback TCP socket in the same run: the transfer limit;
- ``aggregator_peak_mb`` / ``coordinator_peak_mb``: peak RSS (VmHWM) of each process.

Target: a round within 5x the transfer limit at 8 x 1e7, aggregator memory flat in N.
Usage: python benchmarks/round.py [--json] [--grid 4x1e6,8x1e6,4x1e7,8x1e7] [--rounds 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fedattn.aggregator.client import AggregatorClient, Timeout
from fedattn.coordinator.client import CoordinatorClient, identity_from_dir
from fedattn.runner import local, manifests
from fedattn.runner.processes import supervised

ROOT = Path(__file__).resolve().parent.parent


def _synthetic_participant(coordinator: str, pki_dir: str, session: str, name: str) -> None:
    identity = identity_from_dir(Path(pki_dir), name)
    api = CoordinatorClient(base_url=coordinator, identity=identity)
    joined = api.join(session, name)
    client = AggregatorClient(
        endpoint=joined["aggregator"]["endpoint"],
        server_public=joined["aggregator"]["public_key"].encode(),
        public=identity.curve_public.read_bytes(),
        secret=identity.curve_secret.read_bytes(),
        session=session,
        name=name,
        timeout_seconds=120,
    )
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(1.0):
            api.heartbeat(session, name)

    threading.Thread(target=beat, daemon=True).start()
    with client:
        client.send("hello")
        while True:
            try:
                msg = client.recv(timeout_seconds=300)
            except Timeout:
                break
            if msg.kind == "model":
                client.send("update", round=msg.round, arrays=[msg.arrays[0]], meta={"num_examples": 1})
            elif msg.kind == "done":
                break
    stop.set()
    api.leave(session, name, {"reason": "benchmark"})


def _bundle(clients: int, params: int, rounds: int) -> manifests.Bundle:
    base = manifests.load(ROOT / "examples/learning-digits.yaml")
    session = copy.deepcopy(base.session)
    session["metadata"]["name"] = "bench"
    hidden = max(1, round((params - 10) / 75))  # mlp on digits: 64*H + H + H*10 + 10 parameters
    session["spec"].update(rounds=rounds, minParticipants=clients, waitAfterMinSeconds=0, roundTimeoutSeconds=600)
    session["spec"]["model"] = {"name": "mlp", "hiddenUnits": hidden}
    session["spec"]["training"]["evaluate"] = False  # NB: measure the round's data plane, not a P=1e7 forward
    participants = []
    for i in range(clients):
        p = copy.deepcopy(base.participants[0])
        p["metadata"]["name"] = f"synthetic-{i}"
        p["spec"]["sessionRef"] = "bench"
        participants.append(p)
    return manifests.Bundle(session=session, participants=participants, private={})


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_transfer_seconds(nbytes: int, *, chunk: int = 1 << 20) -> float:
    """Time to push ``nbytes`` through one loopback TCP connection (sender and receiver threads)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    payload = memoryview(np.zeros(chunk, dtype=np.uint8))

    def receive() -> None:
        conn, _ = listener.accept()
        buf = bytearray(chunk)
        left = nbytes
        while left:
            left -= conn.recv_into(buf, min(chunk, left))
        conn.close()

    thread = threading.Thread(target=receive)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as out:
        started = time.perf_counter()
        left = nbytes
        while left:
            n = min(chunk, left)
            out.sendall(payload[:n])
            left -= n
        thread.join()
        elapsed = time.perf_counter() - started
    listener.close()
    return elapsed


def measure(clients: int, params: int, rounds: int) -> dict:
    bundle = _bundle(clients, params, rounds)
    actual = 75 * bundle.spec.model.hidden_units + 10
    with tempfile.TemporaryDirectory() as tmp, supervised(Path(tmp) / "logs") as supervisor:
        workdir = Path(tmp)
        session = local.start(bundle, workdir=workdir, supervisor=supervisor, participants=[])
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(
                target=_synthetic_participant,
                args=(session.endpoints.coordinator, str(local.participant_pki_dir(workdir, name)), "bench", name),
            )
            for name in bundle.participant_names
        ]
        for p in procs:
            p.start()
        status = local.follow(session, on_status=lambda s: None, poll_seconds=0.5, timeout_seconds=1800)
        for p in procs:
            p.join(60)
        agg_mb = _peak_mb(supervisor.children["aggregator"].popen.pid)
        coord_mb = _peak_mb(supervisor.children["coordinator"].popen.pid)
        with sqlite3.connect(workdir / "store.sqlite3") as db:
            spans = [b - a for a, b in db.execute(
                "SELECT opened_at, closed_at FROM rounds WHERE session = 'bench' ORDER BY round")]
    if status["phase"] != "Succeeded":
        raise RuntimeError(f"benchmark session ended {status['phase']}: {status.get('message')}")
    moved = 2 * clients * actual * 4
    return {
        "clients": clients,
        "params": actual,
        "round_seconds": statistics.median(spans[1:] or spans),
        "raw_transfer_seconds": raw_transfer_seconds(moved),
        "aggregator_peak_mb": agg_mb,
        "coordinator_peak_mb": coord_mb,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--grid", default="4x1e6,8x1e6,4x1e7,8x1e7", help="comma-separated NxP")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    rows = []
    for cell in args.grid.split(","):
        n, p = cell.split("x")
        row = measure(int(n), int(float(p)), args.rounds)
        row["ratio_to_transfer"] = row["round_seconds"] / row["raw_transfer_seconds"]
        rows.append(row)
        if not args.json:
            print(f"N={row['clients']:2d} P={row['params']:>10,d}  round {row['round_seconds']:.3f}s  "
                  f"raw TCP {row['raw_transfer_seconds']:.3f}s  ratio {row['ratio_to_transfer']:.2f}x (target <= 5)  "
                  f"aggregator {row['aggregator_peak_mb']:.0f} MB  coordinator {row['coordinator_peak_mb']:.0f} MB",
                  flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
