"""FedAttn sync latency over the real aggregator: N participants x T private tokens each, every H layers.

A participant's exchange call lasts from sending its K/V rows to receiving the global union, so most
participants mostly wait for slower ones. The last one to arrive waits for nobody: its call is the
sync's own cost (CurveZMQ transfer both ways, validation, union, reply). Per sync layer this prints
that critical-path latency (the minimum over participants) and, for context, the mean wait.

Target (issue #3): p99 under 20 ms on loopback for N=4 with 256 tokens each.
Usage: python benchmarks/sync_latency.py [--n 4] [--tokens 256] [--h 2] [--codec int4] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from fedattn.attention.gguf_model import load_model
from fedattn.attention.kvcodec import KVCodec
from fedattn.attention.layout import SharedPrefix, even_boundaries, shared_prefix_ids, split_layout
from fedattn.attention.masks import sync_layers
from fedattn.attention.reference import FedAttnPlan
from fedattn.attention.tokenizer import load_tokenizer
from fedattn.attention.traffic import block_bytes
from fedattn.runner.loopback import run_prefill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--h", type=int, default=2)
    parser.add_argument("--codec", default="float32", choices=[c.value for c in KVCodec], help="K/V wire codec")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    model, tokenizer = load_model(), load_tokenizer()
    prefix = shared_prefix_ids(tokenizer, SharedPrefix.TEMPLATE)
    rng = np.random.default_rng(0)
    body = rng.integers(100, model.config.vocab_size - 100, size=args.n * args.tokens)
    ids = np.concatenate([prefix, body]).astype(np.int64)
    layout = split_layout(ids, n_prefix=len(prefix),
                          boundaries=even_boundaries(start=len(prefix), end=len(ids), n_parts=args.n))
    plan = FedAttnPlan(sync_layers=sync_layers(model.config.n_layers, interval=args.h), kv_codec=args.codec)
    critical, waits = [], []
    for _ in range(args.repeats):
        results = run_prefill(model, layout, plan=plan)
        per_layer = np.asarray([r.sync_seconds for r in results]) * 1000.0  # (N, syncs)
        critical.extend(per_layer.min(axis=0).tolist())
        waits.extend(per_layer.mean(axis=0).tolist())
    row = {
        "N": args.n,
        "tokens_per_participant": args.tokens,
        "H": args.h,
        "syncs": len(critical),
        "codec": args.codec,
        "kv_bytes_per_sync_per_holder": block_bytes(args.tokens, KVCodec(args.codec), sparse=False,
                                                    n_kv_heads=model.config.n_kv_heads,
                                                    head_dim=model.config.head_dim),
        "sync_p50_ms": float(np.percentile(critical, 50)),
        "sync_p99_ms": float(np.percentile(critical, 99)),
        "mean_wait_ms": float(np.mean(waits)),
        "target_p99_ms": 20.0,
    }
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(f"N={row['N']} x {row['tokens_per_participant']} tokens, H={row['H']} {row['codec']}, "
              f"{row['syncs']} syncs: "
              f"critical-path p50 {row['sync_p50_ms']:.1f} ms, p99 {row['sync_p99_ms']:.1f} ms "
              f"(target < {row['target_p99_ms']:.0f} ms); mean wait incl. others' compute {row['mean_wait_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
