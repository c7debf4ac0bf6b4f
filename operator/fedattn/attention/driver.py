"""Run every participant of a prompt in one process: one thread each, syncing through MemoryExchange."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import threadpool_limits

from fedattn.attention.exchange import Exchange, MemoryExchange
from fedattn.attention.gguf_model import LlamaModel
from fedattn.attention.layout import PromptLayout
from fedattn.attention.participant import PrefillResult, participant_prefill
from fedattn.attention.reference import FedAttnPlan


def run_prefill(
    model: LlamaModel,
    layout: PromptLayout,
    *,
    plan: FedAttnPlan,
    wrap_exchange: Callable[[int, Exchange], Exchange] | None = None,
) -> list[PrefillResult]:
    """Every participant's prefill, in participant order.

    ``wrap_exchange(participant, exchange)`` may decorate each participant's exchange (to record
    what it sends, or to route it over another transport).
    """
    hub = MemoryExchange(layout.n_participants)

    def task(participant: int):
        exchange = hub.endpoint(participant)
        if wrap_exchange is not None:
            exchange = wrap_exchange(participant, exchange)
        return lambda: participant_prefill(
            model,
            participant=participant,
            own_ids=layout.ids_of(participant),
            own_positions=layout.positions_of(participant),
            prefix_ids=layout.prefix_ids,
            plan=plan,
            exchange=exchange,
            publisher=participant == layout.n_participants - 1,
        )

    # NB: participants already run in parallel; BLAS threads on top of them oversubscribe the cores.
    with threadpool_limits(limits=1 if layout.n_participants > 1 else None, user_api="blas"):
        return run_threads([task(p) for p in range(layout.n_participants)], on_error=hub.abort)


def run_threads(tasks: Sequence[Callable[[], object]], *, on_error: Callable[[], None]) -> list:
    """Run tasks in parallel threads; on the first failure call ``on_error`` and re-raise that failure."""
    errors: list[BaseException] = []

    def guarded(task):
        try:
            return task()
        except BaseException as exc:
            if not isinstance(exc, threading.BrokenBarrierError):
                errors.append(exc)
            on_error()
            raise

    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = [pool.submit(guarded, task) for task in tasks]
        for future in futures:
            future.exception()
    if errors:
        raise errors[0]
    return [future.result() for future in futures]
