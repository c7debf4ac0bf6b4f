"""Our numpy forward pass against llama.cpp on the shipped prompts: prefill and decode tokens per second.

Centralized greedy decoding of every prompt (16 new tokens) with our float32 forward; llama.cpp
(llama-cpp-python, benchmark-only; it compiles from source, so install it by hand) runs the same
prompts and is teacher-forced on our continuation, so ``top1_agreement_with_ours`` is the share of
steps where its (quantized-kernel) argmax picks our token. BLAS and llama.cpp run one thread each.

    .venv/bin/python benchmarks/forward_throughput.py [--limit 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from fedattn.attention.forward import greedy_decode, prefill
from fedattn.attention.gguf_model import load_model, resolve_model_path
from fedattn.attention.layout import SharedPrefix, chat_layout
from fedattn.attention.tokenizer import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedattn_sweep import ROOT, load_cases


def ours(model, tokenizer, layouts, *, max_new: int) -> tuple[dict, list[list[int]]]:
    prefill_s = decode_s = 0.0
    prompt_tokens = new_tokens = 0
    continuations = []
    for layout in layouts:
        started = time.perf_counter()
        logits, cache = prefill(model, layout.token_ids)
        prefill_s += time.perf_counter() - started
        started = time.perf_counter()
        tokens = greedy_decode(
            model,
            cache=cache,
            last_logits=logits[-1],
            start_position=len(layout.token_ids),
            max_new_tokens=max_new,
            stop_tokens=frozenset({tokenizer.eos_token_id}),
        ).tokens
        decode_s += time.perf_counter() - started
        prompt_tokens += len(layout.token_ids)
        new_tokens += max(len(tokens) - 1, 0)  # the first token comes from the prefill logits
        continuations.append(tokens)
    row = {
        "engine": "fedattn numpy",
        "prefill_tokens_per_s": round(prompt_tokens / prefill_s, 1),
        "decode_tokens_per_s": round(new_tokens / max(decode_s, 1e-9), 1),
        "top1_agreement_with_ours": 1.0,
    }
    return row, continuations


def llama_cpp_throughput(path: Path, layouts, continuations) -> dict | str:
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
    for layout, continuation in zip(layouts, continuations, strict=True):
        llm.reset()
        started = time.perf_counter()
        llm.eval(layout.token_ids.tolist())
        prefill_s += time.perf_counter() - started
        prompt_tokens += len(layout.token_ids)
        for step, token in enumerate(continuation):
            # NB: Llama.scores is only filled with logits_all (which would slow prefill); read the last row.
            last = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),))
            agree += int(np.argmax(last)) == token
            steps += 1
            if step == len(continuation) - 1:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, default=ROOT / "benchmarks" / "prompts-qa.yaml")
    parser.add_argument("--limit", type=int, help="use only the first LIMIT prompts")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    model, tokenizer = load_model(), load_tokenizer()
    layouts = [
        chat_layout(tokenizer, case.texts, shared_prefix=SharedPrefix.TEMPLATE)
        for case in load_cases(args.prompts)[: args.limit]
    ]
    with threadpool_limits(limits=1, user_api="blas"):
        row, continuations = ours(model, tokenizer, layouts, max_new=args.max_new_tokens)
    rows = [row]
    llama = llama_cpp_throughput(resolve_model_path(), layouts, continuations)
    if isinstance(llama, str):
        print(llama, file=sys.stderr)
    else:
        rows.append(llama)
    print(json.dumps(rows, indent=1) if args.json else "\n".join(map(str, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
