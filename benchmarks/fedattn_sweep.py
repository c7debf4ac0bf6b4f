"""FedAttn sweep: fidelity and cost over sync interval H x participants N, per shared-prefix mode.

For every prompt of the shipped set the global prompt is documents, then the question: the publisher
(the last of N participants) holds the question, N-1 holders split the documents into contiguous token
chunks after the chat template header (N=1: one participant holds everything). Per
(H, N, sharedPrefix) row, averaged over prompts:

- top1_agreement, kl: the publisher's next-token logits teacher-forced on the centralized greedy
  continuation, against centralized logits (KL(centralized || federated), nats, mean over steps);
- exact_match: share of prompts whose free-running federated continuation equals the centralized one;
  correct: prompts whose federated answer contains the expected answer;
- kv_bytes_per_participant (K, V and positions sent, mean over participants), syncs (sync layers),
  sync_p50_ms / sync_p99_ms (each participant's wall time in exchange, pooled), prefill_ratio (wall
  time of all participants' prefill on this machine / centralized prefill).

BLAS (and llama.cpp) run one thread per compute thread throughout, so centralized, federated and
llama.cpp runs compete for the cores the same way (multi-threaded kernels spin badly on busy
cores). A throughput comparison with llama.cpp (llama-cpp-python, benchmark-only; it compiles from
source, so install it by hand) is printed when that package is installed.

    .venv/bin/python benchmarks/fedattn_sweep.py --quick
    .venv/bin/python benchmarks/fedattn_sweep.py --json > sweep.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

from fedattn.attention.fidelity import exact_match, mean_kl, top1_agreement
from fedattn.attention.forward import Generation, greedy_decode, prefill
from fedattn.attention.gguf_model import LlamaModel, load_model, resolve_model_path
from fedattn.attention.layout import PromptLayout, SharedPrefix, chat_layout, even_boundaries, split_layout
from fedattn.attention.masks import sync_layers
from fedattn.attention.participant import participant_decode
from fedattn.attention.reference import FedAttnPlan
from fedattn.attention.tokenizer import ChatTokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
#: transport name -> "module:function" like run_prefill: (model, layout, *, plan) -> [PrefillResult]
TRANSPORTS = {
    "memory": "fedattn.attention.driver:run_prefill",
    "zmq": "fedattn.runner.loopback:run_prefill",
}


@dataclass(frozen=True)
class Case:
    id: str
    texts: list[str]
    answers: list[str]

    def is_correct(self, reply: str) -> bool:
        return any(answer.lower() in reply.lower() for answer in self.answers)


@dataclass(frozen=True)
class Centralized:
    layout: PromptLayout  # whole prompt, template header as prefix (used to re-split per row)
    prefill_seconds: float
    decode_seconds: float
    generation: Generation


def load_cases(path: Path) -> list[Case]:
    items = yaml.safe_load(path.read_text())["prompts"]
    return [
        Case(
            item["id"],
            [d + "\n" for d in item["documents"]] + [item["question"] + "\n"],
            item["answer"].split("|"),
        )
        for item in items
    ]


def load_transport(name: str):
    module, function = TRANSPORTS[name].split(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"transport {name!r} is not available ({TRANSPORTS[name]}): {exc}") from exc


def run_centralized(model: LlamaModel, tokenizer: ChatTokenizer, case: Case, *, max_new: int) -> Centralized:
    layout = chat_layout(tokenizer, case.texts, shared_prefix=SharedPrefix.TEMPLATE)
    started = time.perf_counter()
    logits, cache = prefill(model, layout.token_ids)
    prefilled = time.perf_counter()
    generation = greedy_decode(
        model,
        cache=cache,
        last_logits=logits[-1],
        start_position=len(layout.token_ids),
        max_new_tokens=max_new,
        stop_tokens=frozenset({tokenizer.eos_token_id}),
    )
    return Centralized(layout, prefilled - started, time.perf_counter() - prefilled, generation)


def federated_layout(central: PromptLayout, *, n: int, shared_prefix: SharedPrefix) -> PromptLayout:
    """The publisher (last) holds the whole question; n-1 holders split the documents evenly.

    ``central`` has the template header as its prefix and the question as its last participant.
    """
    header = central.n_prefix
    n_prefix = {SharedPrefix.NONE: 0, SharedPrefix.SINK: 1, SharedPrefix.TEMPLATE: header}[shared_prefix]
    question = int(central.positions_of(central.n_participants - 1)[0])
    boundaries = [] if n == 1 else [*even_boundaries(start=header, end=question, n_parts=n - 1), question]
    return split_layout(central.token_ids, n_prefix=n_prefix, boundaries=boundaries)


def sweep_row(model, tokenizer, cases, centrals, *, h, n, shared_prefix, run_prefill, max_new) -> dict:
    plan = FedAttnPlan(sync_layers=sync_layers(model.config.n_layers, interval=h))
    top1, kl, exact, correct, kv_bytes, latencies = [], [], [], 0, [], []
    fed_seconds = central_seconds = 0.0
    stop = frozenset({tokenizer.eos_token_id})
    for case, central in zip(cases, centrals, strict=True):
        layout = federated_layout(central.layout, n=n, shared_prefix=shared_prefix)
        started = time.perf_counter()
        results = run_prefill(model, layout, plan=plan)
        fed_seconds += time.perf_counter() - started
        central_seconds += central.prefill_seconds
        publisher = results[-1]
        forced = participant_decode(
            model, publisher, max_new_tokens=0, forced_tokens=central.generation.tokens
        )
        # NB: a free-running decode only differs from the centralized one after the first step whose
        # argmax disagrees; when none does, it is the centralized continuation and need not be rerun.
        agrees = forced.step_logits.argmax(-1) == np.array(central.generation.tokens)
        free_tokens = (
            central.generation.tokens
            if agrees.all()
            else participant_decode(model, publisher, max_new_tokens=max_new, stop_tokens=stop).tokens
        )
        top1.append(top1_agreement(central.generation.step_logits, forced.step_logits))
        kl.append(mean_kl(central.generation.step_logits, forced.step_logits))
        exact.append(exact_match(central.generation.tokens, free_tokens))
        correct += case.is_correct(tokenizer.decode(free_tokens))
        kv_bytes.append(np.mean([r.kv_bytes_sent for r in results]))
        latencies.extend(s for r in results for s in r.sync_seconds)
    ms = np.array(latencies) * 1e3
    return {
        "H": h,
        "N": n,
        "shared_prefix": str(shared_prefix),
        "top1_agreement": round(float(np.mean(top1)), 4),
        "kl": round(float(np.mean(kl)), 4),
        "exact_match": round(float(np.mean(exact)), 4),
        "correct": correct,
        "prompts": len(cases),
        "kv_bytes_per_participant": int(np.mean(kv_bytes)),
        "syncs": len(plan.sync_layers),
        "sync_p50_ms": round(float(np.percentile(ms, 50)), 3) if ms.size else 0.0,
        "sync_p99_ms": round(float(np.percentile(ms, 99)), 3) if ms.size else 0.0,
        "prefill_ratio": round(fed_seconds / central_seconds, 3),
    }


def llama_cpp_throughput(path: Path, centrals: list[Centralized]) -> dict | str:
    """llama.cpp's prefill/decode tokens per second on the same prompts, or why it was skipped.

    Decoding is teacher-forced on our centralized continuation, so ``top1_agreement_with_ours`` is the
    share of steps where llama.cpp's (quantized-kernel) argmax picks our float32 model's token.
    """
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError as exc:
        return f"llama.cpp row skipped: llama-cpp-python is not installed ({exc})"
    llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=1, n_threads_batch=1, verbose=False)
    prefill_s = decode_s = 0.0
    prompt_tokens = new_tokens = agree = steps = 0
    for central in centrals:
        llm.reset()
        started = time.perf_counter()
        llm.eval(central.layout.token_ids.tolist())
        prefill_s += time.perf_counter() - started
        prompt_tokens += len(central.layout.token_ids)
        ours = central.generation.tokens
        for step, token in enumerate(ours):
            # NB: Llama.scores is only filled with logits_all (which would slow prefill); read the last row.
            last = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),))
            agree += int(np.argmax(last)) == token
            steps += 1
            if step == len(ours) - 1:
                break
            started = time.perf_counter()
            llm.eval([token])
            decode_s += time.perf_counter() - started
            new_tokens += 1
    return {
        "engine": "llama.cpp",
        "prefill_tokens_per_s": round(prompt_tokens / prefill_s, 1),
        "decode_tokens_per_s": round(new_tokens / max(decode_s, 1e-9), 1),
        "top1_agreement_with_ours": round(agree / steps, 4),
    }


def ours_throughput(centrals: list[Centralized]) -> dict:
    prompt_tokens = sum(len(c.layout.token_ids) for c in centrals)
    # the first generated token comes from the prefill logits; later ones each cost a decode step
    new_tokens = sum(max(len(c.generation.tokens) - 1, 0) for c in centrals)
    return {
        "engine": "fedattn numpy",
        "prefill_tokens_per_s": round(prompt_tokens / sum(c.prefill_seconds for c in centrals), 1),
        "decode_tokens_per_s": round(new_tokens / max(sum(c.decode_seconds for c in centrals), 1e-9), 1),
        "top1_agreement_with_ours": 1.0,
    }


def print_table(rows: list[dict], out) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |", file=out)
    print("|" + "---|" * len(keys), file=out)
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |", file=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, default=ROOT / "benchmarks" / "prompts-qa.yaml")
    parser.add_argument("--quick", action="store_true", help="4 prompts, H in {1,2,8}, N in {1,2,4}")
    parser.add_argument("--h", type=int, nargs="+", help="sync intervals (default 1 2 4 8 30)")
    parser.add_argument("--n", type=int, nargs="+", help="participant counts (default 1 2 4 8)")
    parser.add_argument(
        "--prefixes", nargs="+", default=["none", "template"], choices=[m.value for m in SharedPrefix]
    )
    parser.add_argument("--limit", type=int, help="use only the first LIMIT prompts")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per prompt")
    parser.add_argument("--transport", choices=sorted(TRANSPORTS), default="memory")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list on stdout")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp throughput row")
    args = parser.parse_args(argv)
    args.h = args.h or ([1, 2, 8] if args.quick else [1, 2, 4, 8, 30])
    args.n = args.n or ([1, 2, 4] if args.quick else [1, 2, 4, 8])
    args.limit = args.limit or (4 if args.quick else None)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_prefill = load_transport(args.transport)
    model, tokenizer = load_model(), load_tokenizer()
    cases = load_cases(args.prompts)[: args.limit]
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        centrals = [run_centralized(model, tokenizer, case, max_new=args.max_new_tokens) for case in cases]
        replies = [tokenizer.decode(c.generation.tokens) for c in centrals]
        n_correct = sum(case.is_correct(reply) for case, reply in zip(cases, replies, strict=True))
        print(f"centralized: {n_correct}/{len(cases)} correct", file=sys.stderr)
        for shared_prefix in map(SharedPrefix, args.prefixes):
            for h in args.h:
                for n in args.n:
                    started = time.perf_counter()
                    row = sweep_row(
                        model,
                        tokenizer,
                        cases,
                        centrals,
                        h=h,
                        n=n,
                        shared_prefix=shared_prefix,
                        run_prefill=run_prefill,
                        max_new=args.max_new_tokens,
                    )
                    rows.append(row)
                    print(f"{row} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    throughput = [ours_throughput(centrals)]
    if not args.no_llama_cpp:
        llama = llama_cpp_throughput(resolve_model_path(), centrals)
        if isinstance(llama, str):
            print(llama, file=sys.stderr)
        else:
            throughput.append(llama)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        print(json.dumps(throughput), file=sys.stderr)
    else:
        print_table(rows, sys.stdout)
        print(file=sys.stdout)
        print_table(throughput, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
