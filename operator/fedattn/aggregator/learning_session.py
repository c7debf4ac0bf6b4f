"""A learning session's state: rounds over one global parameter vector, folded by its strategy.

Socket-free (see :mod:`fedattn.aggregator.sessions`); the conversation that drives it is
:mod:`fedattn.aggregator.learning_protocol`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedattn import wire
from fedattn.aggregator.evaluation import RoundEvaluation
from fedattn.aggregator.secure import SecureRound
from fedattn.aggregator.sessions import Session
from fedattn.aggregator.strategies import Strategy, build_session_strategy
from fedattn.aggregator.strategies.fedavg import FOLD_GROUP
from fedattn.aggregator.strategies.scores import Reliability, cosine, should_evict, update_reliability
from fedattn.api.spec import SessionSpec
from fedattn.learning import compression, secagg
from fedattn.learning.named import FLAT, Layout, LayoutError, names_of
from fedattn.learning.privacy import DPSettings, PrivacyBudget

Evaluate = Callable[[np.ndarray], float]


@dataclass
class RoundResult:
    round: int
    contributions: int
    weight_total: float
    aggregation_seconds: float
    model_checksum: int
    accuracy: float | None
    update_bytes: int = 0  # payload bytes of the round's accepted updates, as sent (compressed or not)
    epsilon: float | None = None  # DP: epsilon spent after this round (dp-accounting, RDP)
    stop: str | None = None  # why no further round may open (PrivacyBudgetExhausted: ...), if so
    scores: dict[str, float] | None = None  # contribution: cosine of each delta to the last global step
    reliability: dict[str, float] | None = None  # EMA of each member's round scores (scores.Reliability)
    evict: list[str] | None = None  # members to evict under spec.eviction (the coordinator's evict API)
    evaluation: dict[str, Any] | None = None  # federated evaluation of the new global model (evaluation.py)
    model_kept: str | None = None  # why the round's aggregate was not taken (the old model stays)

    def meta(self) -> dict[str, Any]:
        """The ``ctl_close_round`` reply fields (absent optional values are left out)."""
        out: dict[str, Any] = {
            "contributions": self.contributions,
            "weight_total": self.weight_total,
            "aggregation_seconds": self.aggregation_seconds,
            "model_checksum": self.model_checksum,
            "update_bytes": self.update_bytes,
        }
        for key in ("accuracy", "epsilon", "stop", "scores", "reliability", "evict", "evaluation", "model_kept"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def clip_delta(update: np.ndarray, global_params: np.ndarray, *, clip_norm: float) -> np.ndarray:
    """``update`` with its delta from ``global_params`` scaled down to L2 norm ``clip_norm`` (no noise).

    In float64, so a delta of float32-max values has a finite norm to scale by.
    """
    delta = np.subtract(update, global_params, dtype=np.float64)
    norm = float(np.linalg.norm(delta))
    if norm <= clip_norm:
        return update
    return np.add(global_params, delta * (clip_norm / norm), dtype=np.float32)


class LearningSession(Session):
    """Rounds of federated learning over one global model: named arrays (``layout``), folded flat.

    Without an initial model (``initial=None``: the session takes one participant's
    ``get_parameters``, as Flower does by default) the session waits for :meth:`adopt`; a round
    opened before that starts when the model arrives.
    """

    def __init__(
        self,
        *,
        name: str,
        spec: SessionSpec,
        weights: dict[str, float],
        initial: list[np.ndarray] | np.ndarray | None,
        names: list[str] | None = None,
        evaluate: Evaluate | None = None,
        max_payload_bytes: int = 1 << 30,  # NB: until a model sets it; the socket's frame limit still holds
    ) -> None:
        super().__init__(name=name, mode="learning", spec=spec, weights=weights, max_payload_bytes=max_payload_bytes)
        self.layout: Layout | None = None
        self.strategy: Strategy | None = None
        self.global_params: np.ndarray | None = None
        self.budget: PrivacyBudget | None = DPSettings.from_spec(spec.dp).budget() if spec.dp else None
        self.last_result: RoundResult | None = None
        secure = spec.secure_aggregation
        self.secure_threshold = (
            secagg.resolve_threshold({"threshold": secure.threshold}, min_participants=self.min_participants)
            if secure is not None and secure.enabled
            else None
        )
        self.secure: SecureRound | None = None  # this round's secure aggregation, when enabled
        self.unmask_due = False
        self.reliability: dict[str, Reliability] = {}
        self.evicted: set[str] = set()
        self.last_step: np.ndarray | None = None  # the previous round's global change, the score reference
        self.similarity: dict[str, float] = {}
        self.evaluate = evaluate
        self.evaluation: RoundEvaluation | None = None  # the round's federated evaluation, while collected
        self.round = 0
        self.open = False
        self.members: frozenset[str] = frozenset()
        self.contributed: dict[str, float] = {}
        self.opened_at = 0.0
        self.fold_seconds = 0.0
        self.update_bytes = 0  # payload bytes of this round's accepted updates (after compression)
        self.reopened = False  # the open round was reopened from a checkpoint by a restarted aggregator
        self._pending: list[tuple[np.ndarray, float]] = []
        if initial is not None:
            self.adopt(list(initial) if isinstance(initial, list) else [initial], names)

    def adopt(self, arrays: list[np.ndarray], names: list[str] | None) -> None:
        """Take ``arrays`` as the initial model, defining the session's layout; starts a round opened
        while the session waited for it. ValueError when they cannot be a model (or one was taken)."""
        if self.layout is not None:
            raise ValueError("the session already has its initial model")
        if len(arrays) == 1 and names is None:
            # NB: an unnamed single array (ctl_configure, the built-in hook) is the flat float32 model
            arrays, names = [np.asarray(arrays[0], dtype=np.float32).reshape(-1)], [FLAT]
        layout = Layout.of(arrays, names)
        layout.check(arrays)
        self.layout = layout
        self.global_params = np.ascontiguousarray(layout.flatten(arrays), dtype=np.float32)
        # NB: a top-k "compressed" update with k near P (int32 indices + float32 values) is twice a model.
        self.max_payload_bytes = 2 * max(self.global_params.nbytes, sum(a.nbytes for a in arrays)) + 64 * 1024
        # NB: DP noise must not be predictable, so its generator is seeded from the OS, not the spec.
        self.strategy = build_session_strategy(self.spec, size=layout.size, rng=np.random.default_rng())
        if self.open:
            self._begin_round()

    @property
    def has_model(self) -> bool:
        return self.global_params is not None

    @property
    def size(self) -> int:
        return 0 if self.global_params is None else int(self.global_params.size)

    def global_arrays(self) -> list[np.ndarray]:
        """The global model as the named arrays participants get (views where the dtype is float32)."""
        assert self.layout is not None and self.global_params is not None
        return self.layout.unflatten(self.global_params)

    @property
    def checkpoint_every(self) -> int:
        """``spec.checkpoint.everyRounds`` (0: never)."""
        return self.spec.checkpoint.every_rounds

    def open_round(self, round: int, participants: list[str]) -> None:
        """Start round ``round`` (any number above the last one) for ``participants`` (session members).

        Opening the round that is already open with the same participants is a no-op (a retried request,
        or the round a restarted aggregator reopened from its checkpoint). With DP, a round that would
        exceed ``targetEpsilon`` is refused with ``PrivacyBudgetExhausted``.
        """
        if self.open and round == self.round and frozenset(participants) == self.members:
            return
        if self.open:
            raise ValueError(f"round {self.round} is still open")
        if round <= self.round:
            # NB: later rounds may be skipped: after an aggregator restart the coordinator continues
            # with its own round number (from the initial model until checkpoints exist).
            raise ValueError(f"round {round} was already opened (last {self.round})")
        unknown = sorted(set(participants) - self.weights.keys())
        if unknown or not participants:
            raise ValueError(f"participants must be non-empty session members; unknown: {unknown}")
        if self.budget is not None and not (check := self.budget.check_next_round()).allowed:
            raise ValueError(check.reason)
        self.round, self.open, self.members = round, True, frozenset(participants)
        self.contributed = {}
        self.similarity = {}
        self.unmask_due = False
        self.secure = None
        self.evaluation = None
        if self.has_model:
            self._begin_round()
        self._pending = []
        self.opened_at = time.monotonic()
        self.fold_seconds = 0.0
        self.update_bytes = 0
        self.reopened = False

    def _begin_round(self) -> None:
        assert self.strategy is not None
        self.strategy.begin_round(round=self.round, global_params=self.global_params, n_expected=len(self.members))
        if self.secure_threshold is not None:
            self.secure = SecureRound(
                session=self.name,
                round=self.round,
                members=self.members,
                threshold=min(self.secure_threshold, len(self.members)),
                size=self.size,
            )

    def accept(
        self, *, participant: str, round: int, arrays: list[np.ndarray], meta: Mapping[str, Any]
    ) -> float:
        """Take one update (folded now, or with the rest of its socket burst); returns its weight.

        Raises WireError with the rejection code; everything is checked before the update is held.
        """
        if not self.open or round != self.round or not self.has_model:
            state = f"round {self.round} is open" if self.open else f"no round is open (last {self.round})"
            raise wire.WireError("stale_round", f"update for round {round}, but {state}")
        if participant not in self.members:
            raise wire.WireError("not_in_round", f"{participant} is not a participant of round {round}")
        if participant in self.contributed:
            raise wire.WireError("duplicate", f"{participant} already contributed to round {round}")
        examples = meta.get("num_examples")
        limit = self.spec.update_limits.max_examples
        if isinstance(examples, bool) or not isinstance(examples, int | float) or not 0 < examples < math.inf:
            raise wire.WireError("bad_meta", f"num_examples must be a number > 0, got {examples!r}")
        if examples > limit:
            # NB: an update's FedAvg weight is its own claim; unbounded, one member outweighs everyone
            raise wire.WireError(
                "bad_meta", f"num_examples {examples!r} is above this session's updateLimits.maxExamples {limit}"
            )
        weight = float(examples) * self.weights[participant]
        if self.secure is not None:
            if not meta.get("masked"):
                raise wire.WireError("bad_meta", "this session aggregates securely: send a masked update")
            self.unmask_due = self.secure.add_masked(participant, arrays)
            self.contributed[participant] = weight
            return weight
        update = self._update_of(arrays, meta)
        if self.last_step is not None:
            self.similarity[participant] = cosine(update - self.global_params, self.last_step)
        if self.strategy.folds_in_batches:
            # NB: held (a view of the received frame, no copy) until fold_pending at the end of the socket
            # burst or when FOLD_GROUP are waiting, so updates that arrive together share one pass.
            self._pending.append((update, weight))
            if len(self._pending) >= FOLD_GROUP:
                self.fold_pending()
        else:
            self._timed_fold([update], [weight])
        self.contributed[participant] = weight
        return weight

    def _update_of(self, arrays: list[np.ndarray], meta: Mapping[str, Any]) -> np.ndarray:
        """The full local model an update stands for: sent as is, or a compressed delta from the global;
        finite after decoding, and its delta clipped to ``updateLimits.clipNorm`` when that is set."""
        if "compression" in meta:  # decoded on arrival (fedattn.learning.compression, code bad_encoding)
            self._check_codec(meta["compression"])
            delta = compression.decode(arrays, meta["compression"], size=self.size)
            # NB: the wire checked the frames, not what they decode to (127 * a scale of 3e38 is inf)
            update = np.add(self.global_params, delta, dtype=np.float32)
        else:
            assert self.layout is not None
            try:
                self.layout.check(arrays, names_of(meta))
            except LayoutError as exc:
                raise wire.WireError("shape_mismatch", f"update refused: {exc}") from None
            update = self.layout.flatten(arrays)
        if not (np.isfinite(update.min()) and np.isfinite(update.max())):
            raise wire.WireError("non_finite", "the update decodes to (or adds up to) NaN or Inf values")
        clip = self.spec.update_limits.clip_norm
        return update if clip is None else clip_delta(update, self.global_params, clip_norm=clip)

    def _check_codec(self, described: Any) -> None:
        """Compressed updates only in a session that compresses, and only with its codec."""
        if self.spec.compression is None:
            raise wire.WireError("bad_encoding", "this session does not compress updates: send a dense float32 model")
        expected = compression.CompressionSpec(
            quantize_bits=self.spec.compression.quantize_bits, top_k=self.spec.compression.top_k
        ).codec
        codec = described.get("codec") if isinstance(described, Mapping) else None
        if codec not in (expected, "dense"):
            raise wire.WireError("bad_encoding", f"this session's codec is {expected!r}, not {codec!r}")

    def fold_pending(self) -> None:
        """Fold the updates accepted but not folded yet (the server calls this after each burst)."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._timed_fold([u for u, _ in pending], [w for _, w in pending])

    def _timed_fold(self, updates: list[np.ndarray], weights: list[float]) -> None:
        start = time.perf_counter()
        try:
            self.strategy.fold_many(updates, weights)
        except ValueError as exc:  # a strategy's own checks (robust rules' buffers, parameters)
            raise wire.WireError("rejected_by_strategy", str(exc)) from None
        finally:
            self.fold_seconds += time.perf_counter() - start

    def close_round(self, round: int) -> RoundResult:
        """Finish the open round: the strategy's result becomes the global model.

        Closing the round that was closed last returns the same result again (a retried request whose
        reply was lost, possibly to an aggregator restarted from the checkpoint of that round).
        """
        if not self.open and self.last_result is not None and round == self.last_result.round:
            return self.last_result
        if not self.open or round != self.round:
            raise ValueError(
                f"round {round} is not the open round (open: {self.round if self.open else None})"
            )
        failed = self.secure.failed if self.secure is not None else None
        if not self.contributed and not self.reopened and failed is None:
            raise ValueError(f"round {round} has no contributions; keep it open or finish the session")
        self.fold_pending()
        start = time.perf_counter()
        kept = failed  # NB: a failed secure round has nothing to fold; the session goes on from the old model
        if self.secure is not None and self.contributed and failed is None:
            if self.secure.mean is None:
                raise ValueError(f"round {round}: the secure sum is not unmasked yet")
            else:
                self._timed_fold([self.secure.mean], [1.0])  # NB: the only update the aggregator ever sees
        if self.contributed and kept is None:
            new = self.strategy.finish()
            if np.isfinite(new).all():
                previous, self.global_params = self.global_params, new
                self.last_step = np.subtract(self.global_params, previous, dtype=np.float64)
            else:  # NB: never send a model nobody can decode; the session goes on from the old one
                kept = f"the round's aggregate has {int((~np.isfinite(new)).sum())} non-finite values"
        # NB: else a round reopened after a restart whose updates died with the old process: the
        # coordinator counted them and closes it; the model stays as checkpointed, the session goes on.
        seconds = self.fold_seconds + time.perf_counter() - start
        self.open = False
        accuracy = float(self.evaluate(self.global_params)) if self.evaluate else None
        epsilon = stop = None
        if self.budget is not None:
            epsilon = self.budget.record_round() if self.contributed else self.budget.epsilon_spent
            check = self.budget.check_next_round()
            stop = None if check.allowed else check.reason
        scores, reliability, evict = self._score_round()
        self.last_result = RoundResult(
            round=round,
            contributions=len(self.contributed),
            weight_total=float(sum(self.contributed.values())),
            aggregation_seconds=seconds,
            model_checksum=wire.checksum(self.global_params),
            accuracy=accuracy,
            update_bytes=self.update_bytes,
            epsilon=epsilon,
            stop=stop,
            scores=scores,
            reliability=reliability,
            evict=evict,
            model_kept=kept,
        )
        return self.last_result

    def _score_round(self) -> tuple[dict[str, float] | None, dict[str, float] | None, list[str] | None]:
        """Round scores of the members (late ones score 0), their reliability, and who to evict.

        Nothing is scored before a reference exists (round 1 has no previous global step).
        """
        if not self.similarity:
            return None, None, None
        eviction = self.spec.eviction
        min_score = eviction.min_score if eviction is not None else 0.0
        for name in self.members:
            record = self.reliability.get(name, Reliability())
            self.reliability[name] = update_reliability(
                record, similarity=self.similarity.get(name), min_score=min_score
            )
        evict = None
        if eviction is not None:
            after = eviction.after_rounds
            evict = sorted(
                n
                for n in self.members - self.evicted
                if should_evict(self.reliability[n], after_rounds=after)
            )
            self.evicted.update(evict)
        reliability = {n: self.reliability[n].score for n in sorted(self.members)}
        return dict(sorted(self.similarity.items())), reliability, evict

    # --- checkpoints (the server writes and reads them: fedattn.aggregator.checkpoint) ------------

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What a checkpoint holds between rounds: global model, rule state, round, privacy rounds."""
        if self.open:
            raise ValueError(f"round {self.round} is open; checkpoints are taken between rounds")
        state = self.strategy.state_dict()
        arrays = {"global": self.global_params, **{f"strategy.{k}": np.asarray(v) for k, v in state.items()}}
        meta = {
            "spec": self.spec.to_manifest(),
            "weights": self.weights,
            "finished": False,
            "round": self.round,
            "size": self.size,
            "layout": self.layout.to_meta() if self.layout is not None else None,
            "strategy": self.spec.strategy.name,
            "dp_rounds": self.budget.rounds_done if self.budget is not None else None,
            "last_result": None if self.last_result is None else vars(self.last_result),
        }
        return arrays, meta

    def restore(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Continue from :meth:`snapshot`'s output; raises ValueError when it belongs to another setup."""
        strategy = self.spec.strategy.name
        model = arrays.get("global")
        if meta.get("strategy") != strategy or model is None or model.shape != (self.size,):
            raise ValueError(
                f"checkpoint is for strategy {meta.get('strategy')!r} with P={meta.get('size')}, "
                f"the session runs {strategy!r} with P={self.size}"
            )
        if not np.isfinite(model).all():
            raise ValueError("checkpoint model has non-finite values")
        state = {k.removeprefix("strategy."): v for k, v in arrays.items() if k.startswith("strategy.")}
        self.strategy.load_state_dict(state)
        self.global_params = np.ascontiguousarray(model, dtype=np.float32)
        self.round, self.open = int(meta["round"]), False
        if self.budget is not None:
            self.budget.rounds_done = int(meta.get("dp_rounds") or 0)
        last = meta.get("last_result")
        self.last_result = RoundResult(**last) if last else None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "params": self.size,
            "round": self.round,
            "open": self.open,
            "contributions": len(self.contributed),
        }
