"""FedAttn fidelity-vs-bytes frontier: sync schemes at N participants on the shipped prompt set.

For every prompt the global prompt is documents, then the question: the publisher (the last of N
participants) holds the question, N-1 holders split the documents into contiguous token chunks after
the chat template header (the shared prefix). A scheme is a sync placement (uniform every H layers, a
policy, or explicit layers), a wire codec for K/V (float32, float16, int8/int4/int2 KIVI-style), and
the layers at which holders (not only the publisher) receive others' rows. Per (scheme, N) row,
averaged over prompts:

- bytes_fraction: K/V bytes per participant (sent + received, codes, scales and positions; mean over
  participants) over one prefill, divided by exact sync's (uniform H=1, float32, original protocol);
  see ``fedattn.attention.traffic``;
- prefill_top1 / prefill_kl: the publisher's next-token logits at its own prompt positions;
- top1 / kl: the publisher's logits while it decodes, teacher-forced on the centralized greedy answer
  (KL(centralized || federated), nats, mean over steps);
- correct: prompts whose free-running answer contains the expected one, and kept: those of them that
  centralized inference answers correctly too (only for generated rows; the issue's acceptance is
  kept >= 75% of centralized's correct answers).

Everything runs on the single-process reference (``reference_run``), which the per-participant and
the distributed runs reproduce to 1e-3 (tests), so a sweep row costs one masked forward per prompt.
Teacher forcing is that same forward over prompt + centralized answer (the answer rows belong to the
publisher, which is what decoding does). Centralized answers and logits are cached per prompt.
``--drops`` searches explicit sync layers on the even-indexed prompts (training) and reports them
on the odd-indexed ones (held out). A PNG of the frontier is written next to ``--json``.

    .venv/bin/python benchmarks/fedattn_sweep.py --quick
    .venv/bin/python benchmarks/fedattn_sweep.py --json /tmp/frontier.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

from fedattn.attention.exchange import KV, union_kv
from fedattn.attention.fidelity import mean_kl, top1_agreement
from fedattn.attention.forward import greedy_decode, prefill
from fedattn.attention.gguf_model import LlamaModel, load_model
from fedattn.attention.kvcodec import KEY_AXIS, VALUE_AXIS, KVCodec, roundtrip
from fedattn.attention.layout import PromptLayout, SharedPrefix, chat_layout, even_boundaries, split_layout
from fedattn.attention.masks import SyncPolicy, kept_rows, sync_layers
from fedattn.attention.participant import PrefillResult, participant_prefill
from fedattn.attention.reference import FedAttnPlan, reference_run
from fedattn.attention.tokenizer import ChatTokenizer, load_tokenizer
from fedattn.attention.traffic import exact_sync_bytes, traffic

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = (1 / 2, 1 / 4, 1 / 8, 1 / 16)


@dataclass(frozen=True)
class Case:
    id: str
    texts: list[str]
    answers: list[str]

    def is_correct(self, reply: str) -> bool:
        return any(answer.lower() in reply.lower() for answer in self.answers)


@dataclass(frozen=True)
class Centralized:
    layout: PromptLayout  # whole prompt, template header as prefix, the question as last participant
    tokens: list[int]  # greedy answer
    step_logits: np.ndarray  # (len(tokens), V)
    prompt_logits: np.ndarray  # (L, V)


@dataclass(frozen=True)
class Scheme:
    """A sync schedule: placement (policy with interval H, or explicit layers), codec, holder layers."""

    policy: str = "uniform"  # a SyncPolicy, or "explicit"
    interval: int = 1
    codec: str = "float32"
    holders: str = "same"  # "same": holders receive at every sync layer; "none": never; "every-K"
    layers: tuple[int, ...] = field(default=())
    keep_ratio: float = 1.0

    @property
    def name(self) -> str:
        place = f"layers {list(self.layers)}" if self.policy == "explicit" else f"{self.policy} H={self.interval}"
        extra = "" if self.holders == "same" else f" holders={self.holders}"
        keep = "" if self.keep_ratio >= 1.0 else f" keep={self.keep_ratio}"
        return f"{place} {self.codec}{extra}{keep}"

    def plan(self, n_layers: int) -> FedAttnPlan:
        if self.policy == "explicit":
            layers = sync_layers(n_layers, layers=list(self.layers))
        else:
            policy = None if self.policy == "uniform" else self.policy
            layers = sync_layers(n_layers, interval=self.interval, policy=policy)
        if self.holders == "same":
            holder_layers = None
        elif self.holders == "none":
            holder_layers = frozenset()
        else:
            every = int(self.holders.removeprefix("every-"))
            holder_layers = frozenset(sorted(layers)[::every])
        return FedAttnPlan(
            sync_layers=layers, holder_sync_layers=holder_layers, kv_codec=self.codec, keep_ratio=self.keep_ratio
        )


def load_cases(path: Path) -> list[Case]:
    items = yaml.safe_load(path.read_text())["prompts"]
    return [
        Case(item["id"], [d + "\n" for d in item["documents"]] + [item["question"] + "\n"], item["answer"].split("|"))
        for item in items
    ]


def run_centralized(
    model: LlamaModel, tokenizer: ChatTokenizer, case: Case, *, max_new: int, cache_dir: Path | None
) -> Centralized:
    """Greedy centralized answer and its logits, cached on disk by prompt tokens and answer length."""
    layout = chat_layout(tokenizer, case.texts, shared_prefix=SharedPrefix.TEMPLATE)
    key = hashlib.sha256(layout.token_ids.tobytes() + str(max_new).encode()).hexdigest()[:16]
    path = cache_dir / f"{case.id}-{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        saved = np.load(path)
        return Centralized(layout, saved["tokens"].tolist(), saved["step_logits"], saved["prompt_logits"])
    logits, cache = prefill(model, layout.token_ids)
    generation = greedy_decode(
        model,
        cache=cache,
        last_logits=logits[-1],
        start_position=len(layout.token_ids),
        max_new_tokens=max_new,
        stop_tokens=frozenset({tokenizer.eos_token_id}),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, tokens=np.asarray(generation.tokens), step_logits=generation.step_logits, prompt_logits=logits)
    return Centralized(layout, generation.tokens, generation.step_logits, logits)


def federated_layout(central: PromptLayout, *, n: int, answer: list[int] = ()) -> PromptLayout:
    """The publisher (last) holds the question (and ``answer``, for teacher forcing); n-1 holders
    split the documents evenly. ``central`` has the template header as prefix, the question last."""
    header = central.n_prefix
    question = int(central.positions_of(central.n_participants - 1)[0])
    boundaries = [] if n == 1 else [*even_boundaries(start=header, end=question, n_parts=n - 1), question]
    ids = np.concatenate([central.token_ids, np.asarray(answer, dtype=np.int64)])
    return split_layout(ids, n_prefix=header, boundaries=boundaries)


def holder_blocks(model: LlamaModel, layout: PromptLayout) -> dict[int, list[KV]]:
    """Every holder's K/V rows at every layer when holders never receive: a function of the prompt
    alone, so every scheme in which holders do not listen reuses it (N=2 always)."""
    listen_never = FedAttnPlan(sync_layers=frozenset(range(model.config.n_layers)), holder_sync_layers=frozenset())
    blocks: dict[int, list[KV]] = {layer: [] for layer in range(model.config.n_layers)}

    def record(layer, k, v, positions):
        blocks[layer].append((k, v, positions))
        return k[:, :0], v[:, :0], positions[:0]

    for holder in range(layout.n_participants - 1):
        participant_prefill(
            model,
            participant=holder,
            own_ids=layout.ids_of(holder),
            own_positions=layout.positions_of(holder),
            prefix_ids=layout.prefix_ids,
            plan=listen_never,
            exchange=record,
        )
    return blocks


def publisher_run(model, layout: PromptLayout, plan: FedAttnPlan, blocks: dict[int, list[KV]]) -> PrefillResult:
    """The publisher's prefill against recorded holder rows, each block through the plan's codec."""
    publisher = layout.n_participants - 1

    def replay(layer, k, v, positions):
        parts = []
        for holder, (hk, hv, hp) in enumerate(blocks[layer]):
            keep = kept_rows(hp.shape[0], plan.keep_ratio, seed=plan.seed, participant=holder, layer=layer)
            parts.append(
                (
                    roundtrip(hk[:, keep], plan.kv_codec, axis=KEY_AXIS),
                    roundtrip(hv[:, keep], plan.kv_codec, axis=VALUE_AXIS),
                    hp[keep],
                )
            )
        return union_kv(parts)

    return participant_prefill(
        model,
        participant=publisher,
        own_ids=layout.ids_of(publisher),
        own_positions=layout.positions_of(publisher),
        prefix_ids=layout.prefix_ids,
        plan=plan,
        exchange=replay,
        publisher=True,
    )


class Prompt:
    """One case at one N: its centralized run, layouts and (lazily) the recorded holder rows."""

    def __init__(self, model: LlamaModel, case: Case, central: Centralized, *, n: int, central_correct: bool):
        self.model, self.case, self.central, self.n = model, case, central, n
        self.central_correct = central_correct
        self.layout = federated_layout(central.layout, n=n)
        self.forced = federated_layout(central.layout, n=n, answer=central.tokens[:-1])
        self._blocks: dict[int, list[KV]] | None = None

    def holders_listen(self, plan: FedAttnPlan) -> bool:
        return self.n > 2 and plan.holder_sync_layers != frozenset()

    def blocks(self) -> dict[int, list[KV]]:
        if self._blocks is None:
            self._blocks = holder_blocks(self.model, self.forced)
        return self._blocks

    def publisher_logits(self, plan: FedAttnPlan) -> np.ndarray:
        """The publisher's logits at its question rows and over the teacher-forced answer."""
        if self.holders_listen(plan):
            logits = reference_run(self.model, self.forced, plan=plan).logits
            return logits[self.forced.positions_of(self.n - 1)]
        return publisher_run(self.model, self.forced, plan, self.blocks()).logits

    def answer(self, plan: FedAttnPlan, stop: frozenset[int], max_new: int) -> list[int]:
        """The publisher's free-running greedy answer."""
        if self.holders_listen(plan):
            run = reference_run(self.model, self.layout, plan=plan)
            cache, last = run.publisher_cache, run.logits[-1]
        else:
            # NB: holder rows recorded over the forced layout are the same rows: the answer is after them
            result = publisher_run(self.model, self.layout, plan, self.blocks())
            cache, last = result.cache, result.logits[-1]
        return greedy_decode(
            self.model,
            cache=cache,
            last_logits=last,
            start_position=len(self.layout.token_ids),
            max_new_tokens=max_new,
            stop_tokens=stop,
        ).tokens


def evaluate(model, tokenizer, prompts: list[Prompt], *, scheme: Scheme, generate: bool, max_new: int) -> dict:
    """One frontier row: bytes, prefill and decode fidelity (teacher-forced), correct answers if asked."""
    cfg = model.config
    plan = scheme.plan(cfg.n_layers)
    fractions, per_participant, p_top1, p_kl, top1, kl = [], [], [], [], [], []
    for prompt in prompts:
        central = prompt.central
        logits = prompt.publisher_logits(plan)
        question = prompt.layout.positions_of(prompt.n - 1)
        asked = logits[: len(question)]
        p_top1.append(top1_agreement(central.prompt_logits[question], asked))
        p_kl.append(mean_kl(central.prompt_logits[question], asked))
        steps = logits[len(question) - 1 :]
        top1.append(top1_agreement(central.step_logits, steps))
        kl.append(mean_kl(central.step_logits, steps))
        moved = traffic(prompt.layout, plan, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim)
        mean_bytes = float(np.mean([t.total for t in moved]))
        exact = exact_sync_bytes(prompt.layout, n_layers=cfg.n_layers, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim)
        per_participant.append(mean_bytes)
        fractions.append(mean_bytes / exact)
    return {
        "scheme": scheme.name,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(scheme).items()},
        "N": prompts[0].n,
        "syncs": len(plan.sync_layers),
        "kv_bytes_per_participant": int(np.mean(per_participant)),
        "bytes_fraction": round(float(np.mean(fractions)), 4),
        "prefill_top1": round(float(np.mean(p_top1)), 4),
        "prefill_kl": round(float(np.mean(p_kl)), 4),
        "top1": round(float(np.mean(top1)), 4),
        "kl": round(float(np.mean(kl)), 4),
        **(answers(tokenizer, prompts, plan, max_new=max_new) if generate else {"correct": None, "kept": None}),
        "prompts": len(prompts),
    }


def answers(tokenizer, prompts: list[Prompt], plan: FedAttnPlan, *, max_new: int) -> dict[str, int]:
    """Correct free-running answers, and how many of them centralized inference also gets right."""
    stop = frozenset({tokenizer.eos_token_id})
    right = [p.case.is_correct(tokenizer.decode(p.answer(plan, stop, max_new))) for p in prompts]
    return {"correct": sum(right), "kept": sum(r and p.central_correct for r, p in zip(right, prompts, strict=True))}


def grid(args, *, n: int) -> list[Scheme]:
    """The schemes to measure at N participants (holder schedules only matter when a holder has
    another before it, N > 2)."""
    schemes = (
        []
        if n > 2 and args.no_symmetric
        else [Scheme(interval=h, codec=c) for c in args.codecs for h in args.intervals]
    )
    schemes += [
        Scheme(policy=p, interval=h, codec=c) for p in args.policies for c in args.codecs for h in args.policy_intervals
    ]
    schemes += [
        Scheme(interval=h, codec=c, holders=hold)
        for hold in (args.holders if n > 2 else [])
        for c in args.codecs
        for h in args.intervals
    ]
    schemes += [Scheme(interval=1, codec=c, keep_ratio=k) for k in args.keep for c in args.codecs]
    return schemes


def pruned_layers(
    model, tokenizer, prompts: list[Prompt], *, codec: str, drops: list[int], max_new: int, log
) -> list[tuple[int, ...]]:
    """Explicit sync layers: start from every layer, rank each layer by how much dropping it alone
    raises the decode KL on ``prompts``, then drop the least harmful ones greedily in that order.

    NB: a full greedy search (re-ranking after every drop) costs n_layers evaluations per step; on
    two shared cores one ranking pass is what fits, and later drops are checked on held-out prompts.
    """
    n_layers = model.config.n_layers
    every = tuple(range(n_layers))
    harm = {}
    for layer in every:
        scheme = Scheme(policy="explicit", layers=tuple(x for x in every if x != layer), codec=codec, holders="none")
        harm[layer] = evaluate(model, tokenizer, prompts, scheme=scheme, generate=False, max_new=max_new)["kl"]
    order = sorted(every, key=lambda layer: harm[layer])
    print(f"drop ranking N={prompts[0].n} {codec}: {[(x, round(harm[x], 4)) for x in order]}", file=log)
    return [tuple(sorted(set(every) - set(order[:k]))) for k in drops]


def pareto(rows: list[dict], key: str) -> list[dict]:
    """Rows not beaten by a cheaper-or-equal row with higher-or-equal ``key``, per N."""
    front = []
    for row in rows:
        if not any(
            o is not row
            and o["N"] == row["N"]
            and o["bytes_fraction"] <= row["bytes_fraction"]
            and o[key] >= row[key]
            and (o["bytes_fraction"], o[key]) != (row["bytes_fraction"], row[key])
            for o in rows
        ):
            front.append(row)
    return front


def best_at_budgets(rows: list[dict], *, key: str) -> list[dict]:
    out = []
    for n in sorted({r["N"] for r in rows}):
        for budget in BUDGETS:
            fits = [r for r in rows if r["N"] == n and r["bytes_fraction"] <= budget and r[key] is not None]
            if fits:
                best = max(fits, key=lambda r: (r[key], r["top1"], -r["kl"]))
                out.append({"budget": f"1/{round(1 / budget)}", **best})
    return out


#: scatter marker per kind of placement
MARKERS = {"uniform": "o", "policy": "^", "explicit": "s", "holders listen never": "x"}


def marker_of(row: dict) -> str:
    if row["holders"] != "same":
        return MARKERS["holders listen never"]
    return MARKERS.get(row["policy"], MARKERS["policy"])


def plot(rows: list[dict], path: Path, *, centralized: dict[int, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["N"] for r in rows})
    fig, axes = plt.subplots(2, len(ns), figsize=(6 * len(ns), 8), squeeze=False)
    for col, n in enumerate(ns):
        mine = [r for r in rows if r["N"] == n]
        for row_i, key in enumerate(["top1", "correct"]):
            ax = axes[row_i][col]
            for i, codec in enumerate(KVCodec):
                for policy, marker in MARKERS.items():
                    pts = [
                        r
                        for r in mine
                        if r["codec"] == codec and r[key] is not None and marker_of(r) == marker and r["policy"]
                    ]
                    if pts:
                        ax.scatter(
                            [r["bytes_fraction"] for r in pts],
                            [r[key] for r in pts],
                            label=f"{codec} {policy}",
                            s=22,
                            color=f"C{i}",
                            marker=marker,
                        )
            front = sorted(pareto([r for r in mine if r[key] is not None], key), key=lambda r: r["bytes_fraction"])
            if front:
                ax.step([r["bytes_fraction"] for r in front], [r[key] for r in front], where="post", color="k", lw=1)
            for budget in BUDGETS:
                ax.axvline(budget, color="grey", ls=":", lw=0.8)
            if key == "correct":
                ax.axhline(centralized[n], color="green", ls="--", lw=1, label="centralized")
                ax.axhline(0.75 * centralized[n], color="red", ls=":", lw=1, label="75% of centralized")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("K/V bytes per participant / exact sync (H=1, float32)")
            ax.set_ylabel("publisher top-1 agreement (teacher-forced answer)" if key == "top1" else "correct answers")
            ax.set_title(f"N={n}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(rows: list[dict], out, keys: list[str]) -> None:
    print("| " + " | ".join(keys) + " |", file=out)
    print("|" + "---|" * len(keys), file=out)
    for row in rows:
        print("| " + " | ".join(str(row.get(k)) for k in keys) + " |", file=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, default=ROOT / "benchmarks" / "prompts-qa.yaml")
    parser.add_argument("--quick", action="store_true", help="4 prompts, N=2, a few schemes")
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4], help="participant counts")
    parser.add_argument(
        "--codecs",
        nargs="*",
        default=["float32", "float16", "int8", "int4", "int2"],
        choices=[c.value for c in KVCodec],
    )
    parser.add_argument("--intervals", type=int, nargs="*", default=[1, 2, 4, 8], help="uniform sync intervals H")
    parser.add_argument("--policies", nargs="*", default=[], choices=[p.value for p in SyncPolicy])
    parser.add_argument("--policy-intervals", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--holders", nargs="*", default=[], help="asymmetric holder schedules: none, every-K")
    parser.add_argument("--no-symmetric", action="store_true", help="at N > 2 skip schemes where holders listen")
    parser.add_argument("--keep", type=float, nargs="*", default=[], help="kvKeepRatio values (< 1) at H=1")
    parser.add_argument(
        "--drops",
        type=int,
        nargs="*",
        default=[],
        help="explicit layers: drop this many of the least harmful sync layers (ranked on training prompts)",
    )
    parser.add_argument("--search-codec", default="int4", choices=[c.value for c in KVCodec])
    parser.add_argument("--limit", type=int, help="use only the first LIMIT prompts")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per prompt")
    parser.add_argument(
        "--generate",
        choices=["none", "frontier", "all"],
        default="frontier",
        help="free-running answers (correct/N) for no row, the top-1 frontier, or every row",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/fedattn-sweep-cache"))
    parser.add_argument("--json", type=Path, help="write the rows here, and the frontier plot next to it (.png)")
    parser.add_argument(
        "--combine", type=Path, nargs="+", help="only merge these --json outputs (later ones win) into --json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.n, args.intervals, args.codecs = args.limit or 4, [2], [1, 4], ["float32", "int4"]
    return args


def report(rows: list[dict], *, central_correct: int, prompts: int, ns: list[int], out: Path | None) -> None:
    """Tables (every row; best per byte budget) on stdout, and the JSON and its PNG plot when asked."""
    full = [r for r in rows if "split" not in r]
    keys = ["scheme", "N", "bytes_fraction", "prefill_top1", "top1", "kl", "correct", "kept", "prompts"]
    print(f"centralized: {central_correct}/{prompts}")
    print_table(rows, sys.stdout, keys)
    print("\nbest at each budget (by correct answers, then top-1):")
    print_table(
        best_at_budgets([r for r in full if r["correct"] is not None], key="correct"), sys.stdout, ["budget", *keys]
    )
    print("\nbest at each budget (by top-1):")
    print_table(best_at_budgets(full, key="top1"), sys.stdout, ["budget", *keys])
    if out:
        out.write_text(json.dumps({"centralized_correct": central_correct, "prompts": prompts, "rows": rows}, indent=1))
        plot(full, out.with_suffix(".png"), centralized=dict.fromkeys(ns, central_correct))
        print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        parts = [json.loads(path.read_text()) for path in args.combine]
        # NB: a later file's row for the same scheme and N replaces an earlier one (e.g. with answers)
        rows = list({(r["scheme"], r["N"], r.get("split")): r for part in parts for r in part["rows"]}.values())
        ns = sorted({r["N"] for r in rows})
        report(rows, central_correct=parts[0]["centralized_correct"], prompts=parts[0]["prompts"], ns=ns, out=args.json)
        return 0
    model, tokenizer = load_model(), load_tokenizer()
    cases = load_cases(args.prompts)[: args.limit]
    log = sys.stderr
    stop = frozenset({tokenizer.eos_token_id})
    with threadpool_limits(limits=1, user_api="blas"):
        centrals = [
            run_centralized(model, tokenizer, c, max_new=args.max_new_tokens, cache_dir=args.cache_dir) for c in cases
        ]
        right = [
            case.is_correct(tokenizer.decode([t for t in c.tokens if t not in stop]))
            for case, c in zip(cases, centrals, strict=True)
        ]
        central_correct = sum(right)
        print(f"centralized: {central_correct}/{len(cases)} correct", file=log)
        rows = []
        for n in args.n:
            prompts = [
                Prompt(model, case, central, n=n, central_correct=ok)
                for case, central, ok in zip(cases, centrals, right, strict=True)
            ]
            if args.drops:
                for layers in pruned_layers(
                    model,
                    tokenizer,
                    prompts[0::2],
                    codec=args.search_codec,
                    drops=args.drops,
                    max_new=args.max_new_tokens,
                    log=log,
                ):
                    scheme = Scheme(policy="explicit", layers=layers, codec=args.search_codec, holders="none")
                    row = evaluate(
                        model, tokenizer, prompts[1::2], scheme=scheme, generate=True, max_new=args.max_new_tokens
                    )
                    rows.append({**row, "split": "held-out"})
                    print(rows[-1], file=log)
            for scheme in grid(args, n=n):
                started = time.perf_counter()
                row = evaluate(
                    model,
                    tokenizer,
                    prompts,
                    scheme=scheme,
                    generate=args.generate == "all",
                    max_new=args.max_new_tokens,
                )
                rows.append(row)
                print(f"{row} ({time.perf_counter() - started:.1f} s)", file=log)
            if args.generate == "frontier":
                for row in pareto([r for r in rows if r["N"] == n and "split" not in r], "top1"):
                    if row["correct"] is None:
                        plan = Scheme(
                            **{
                                k: (tuple(v) if k == "layers" else v)
                                for k, v in row.items()
                                if k in Scheme.__dataclass_fields__
                            }
                        ).plan(model.config.n_layers)
                        row.update(answers(tokenizer, prompts, plan, max_new=args.max_new_tokens))
                        print(f"generated: {row['scheme']} N={n}: {row['correct']}/{row['prompts']}", file=log)
    report(rows, central_correct=central_correct, prompts=len(cases), ns=args.n, out=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
