"""The learning conversation: hello, updates, secure aggregation, rounds opened and closed, checkpoints.

Participants say ``hello`` and get the round's ``model``, send one ``update`` per round (acked, and
reported as a ``contribution`` event) or, with secure aggregation, the ``secagg_*`` exchange
(fedattn.aggregator.secure); the coordinator opens and closes rounds (``ctl_open_round``,
``ctl_close_round``). Checkpoints (fedattn.aggregator.checkpoint) are written between rounds and
read back when a restarted aggregator configures or restores a session. docs/protocol.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedattn import wire
from fedattn.aggregator import checkpoint
from fedattn.aggregator.conversation import DEFERRED, Conversation, Handler, Link, MissingUpdates
from fedattn.aggregator.evaluation import RoundEvaluation
from fedattn.aggregator.learning_session import Evaluate, LearningSession
from fedattn.aggregator.output import SessionOutput
from fedattn.api.spec import SessionSpec
from fedattn.learning import model_file
from fedattn.learning.named import Layout, LayoutError, names_of

log = logging.getLogger("fedattn.aggregator")


@dataclass
class Hooks:
    """In-process extension points (the local runner or learning module supplies them).

    ``initial_params(session, spec)`` gives the initial model when ``ctl_configure`` carries none;
    ``evaluator(session, spec)`` gives a held-out ``evaluate(params) -> accuracy`` for close replies.
    Both get the session's typed spec (parsed once at ``ctl_configure``).
    """

    initial_params: Callable[[str, SessionSpec], np.ndarray | None] | None = None
    evaluator: Callable[[str, SessionSpec], Evaluate | None] | None = None


class LearningProtocol(Conversation):
    """Rounds of federated learning; one instance per aggregator, serving every learning session."""

    mode = "learning"

    def __init__(
        self,
        link: Link,
        *,
        hooks: Hooks,
        checkpoint_dir: Path | None,
        output_dir: Path | None = None,
        model_dir: Path | None = None,
    ) -> None:
        super().__init__(link)
        self.hooks = hooks
        self.checkpoint_dir = checkpoint_dir
        self.output_dir = output_dir  # sessions with spec.output write there (fedattn.aggregator.output)
        self.model_dir = model_dir  # where spec.model.initial.path is looked up
        self.outputs: dict[str, SessionOutput] = {}
        self._handlers: dict[str, Handler] = {
            "hello": self._hello,
            "parameters": self._parameters,
            "update": self._update,
            "evaluation": self._evaluation,
            "secagg_keys": self._secagg,
            "secagg_shares": self._secagg,
            "secagg_reveal": self._secagg,
        }

    @property
    def handlers(self) -> Mapping[str, Handler]:
        return self._handlers

    # --- session life cycle -----------------------------------------------------------------------

    def configure(self, *, msg: wire.Message, spec: SessionSpec, weights: dict[str, float]) -> LearningSession:
        names, initial = self._initial_params(msg, spec)
        state = self._session_of(name=msg.session, spec=spec, weights=weights, initial=initial, names=names)
        self._resume(state)
        fresh = (state.round, state.open) == (0, False)
        if self.checkpoint_dir is not None and state.checkpoint_every and fresh and state.has_model:
            self._checkpoint(state)  # NB: from now on a restarted aggregator knows the session by itself
        return state

    def _session_of(
        self,
        *,
        name: str,
        spec: SessionSpec,
        weights: dict[str, float],
        initial: list[np.ndarray] | np.ndarray | None,
        names: list[str] | None = None,
    ) -> LearningSession:
        evaluate = self.hooks.evaluator(name, spec) if self.hooks.evaluator else None
        state = LearningSession(name=name, spec=spec, weights=weights, initial=initial, names=names,
                                evaluate=evaluate)
        if spec.output is not None and self.output_dir is not None:
            self.outputs[name] = SessionOutput(self.output_dir, session=name, spec=spec.output)
        return state

    def restore_checkpointed(self) -> dict[str, LearningSession]:
        """Every unfinished learning session that has a checkpoint, before the server serves anyone.

        So a coordinator whose requests (e.g. the ``ctl_close_round`` of a round the old process had
        open) reach the restarted aggregator finds the session there, at its checkpointed round.
        """
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return {}
        restored = {}
        for path in sorted(self.checkpoint_dir.glob("*.ckpt.npz")):
            name = path.name.removesuffix(".ckpt.npz")
            try:
                saved = checkpoint.load(self.checkpoint_dir, name)
                if saved is None or saved[1].get("finished"):
                    continue
                arrays, meta = saved
                weights = {str(n): float(w) for n, w in meta["weights"].items()}
                # NB: checkpoints written before the typed spec stored the spec without its mode
                spec = SessionSpec.from_manifest({"mode": "learning", **meta["spec"]})
                layout = Layout.from_meta(meta["layout"]) if meta.get("layout") else Layout.flat(arrays["global"].size)
                state = self._session_of(name=name, spec=spec, weights=weights, names=list(layout.names),
                                         initial=layout.unflatten(arrays["global"]))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("checkpoint %s not restored: %s", path.name, exc, extra={"session": name})
                continue
            self._resume(state)
            restored[name] = state
        return restored

    def _checkpoint(self, state: LearningSession, *, finished: bool = False) -> None:
        arrays, meta = state.snapshot()
        start = time.perf_counter()
        checkpoint.save(self.checkpoint_dir, state.name, arrays=arrays, meta={**meta, "finished": finished})
        self.link.metrics.checkpoint_seconds.observe(time.perf_counter() - start)

    def _resume(self, state: LearningSession) -> None:
        """Continue from the session's checkpoint, and reopen the round that was open, if any.

        A checkpoint that does not fit the session (another strategy or model size under the same
        name) is logged and ignored: the session starts from its initial model.
        """
        if self.checkpoint_dir is None:
            return
        ids = {"session": state.name}
        try:
            saved = checkpoint.load(self.checkpoint_dir, state.name)
            if saved is not None and saved[1].get("finished"):
                log.info("the checkpoint is of a finished session: starting afresh", extra=ids)
                return
            if saved is not None:
                state.restore(*saved)
                log.info("resumed from the checkpoint of round %d", state.round, extra=ids)
            reopen = checkpoint.load_open_round(self.checkpoint_dir, state.name)
            if reopen is not None and reopen[0] > state.round:
                state.open_round(*reopen)
                state.reopened = True
                log.info("reopened round %d after a restart", reopen[0], extra=ids)
        except ValueError as exc:  # CheckpointError, StrategyError, PrivacyError
            log.error("checkpoint not used: %s", exc, extra=ids)

    def _initial_params(
        self, msg: wire.Message, spec: SessionSpec
    ) -> tuple[list[str] | None, list[np.ndarray] | np.ndarray | None]:
        """(names, arrays) of the initial model: the configure's arrays, ``spec.model.initial``, the
        hook's (built-in models), zeros of ``meta.params``, or None: a ``client`` model whose first
        participant's ``get_parameters`` will be it."""
        if msg.arrays:
            return names_of(msg.meta), list(msg.arrays)
        initial = spec.model.initial if spec.model is not None else None
        if initial is not None:
            root = self.model_dir or Path.cwd()
            return model_file.read(root / initial.path)
        if spec.model is not None and spec.model.name == "client":
            return None, None
        if self.hooks.initial_params is not None:
            got = self.hooks.initial_params(msg.session, spec)
            if got is not None:
                return None, got
        size = msg.meta.get("params")
        if not isinstance(size, int) or size <= 0:
            raise ValueError("learning sessions need an initial model array or meta.params (P > 0)")
        return None, np.zeros(size, dtype=np.float32)

    def final_arrays(self, state: LearningSession) -> list[Any]:
        """The final model; checkpointed as finished first, so a restart does not bring the session back,
        and written to the session's output."""
        if not state.has_model:
            return []
        if self.checkpoint_dir is not None and state.checkpoint_every and not state.open:
            self._checkpoint(state, finished=True)
            checkpoint.clear_open_round(self.checkpoint_dir, state.name)
        arrays = state.global_arrays()
        output = self.outputs.get(state.name)
        if output is not None and state.layout is not None:
            path = output.finished(round=state.round, names=state.layout.names, arrays=arrays)
            log.info("final model written to %s", path, extra={"session": state.name})
        return arrays

    def after_burst(self, state: LearningSession) -> None:
        try:
            state.fold_pending()
        except wire.WireError as exc:
            log.error("folding accepted updates failed: %s", exc.detail, extra={"session": state.name})

    # --- participants -----------------------------------------------------------------------------

    def _send_model(self, state: LearningSession, name: str, *, kind: str = "model") -> bool:
        """The global model as named arrays; ``config`` is what the strategy asks of clients
        (Flower's configure_fit), ``model`` messages only."""
        if not state.has_model or state.layout is None or state.strategy is None:
            return False  # NB: the session waits for a participant's parameters; sent on adoption
        meta: dict[str, Any] = {"names": list(state.layout.names)}
        if kind == "model":
            config = {"rounds": state.spec.rounds, "local_epochs": state.spec.training.local_epochs,
                      **state.strategy.client_config()}
            meta.update(config=config)
            if state.secure is not None:
                meta.update(state.secure.client_config(), members=sorted(state.members))
        frames = wire.encode(
            kind=kind,
            session=state.name,
            participant=name,
            round=state.round,
            seq=self.link.next_seq(),
            meta=meta,
            arrays=state.global_arrays(),
        )
        return self.link.send(state.routes[name], frames)

    def _hello(self, route: bytes, state: LearningSession, msg: wire.Message, checksums: list[int]) -> None:
        name = msg.participant
        state.routes[name] = route
        welcome = {"mode": state.mode, **({} if state.has_model else {"need_parameters": True})}
        self.link.reply(route, kind="welcome", session=state.name, participant=name, round=state.round, meta=welcome)
        self.link.event(state.name, "hello", participant=name, round=state.round)
        log.info("hello", extra={"session": state.name, "participant": name})
        if state.open and name in state.members and name not in state.contributed:
            self._send_model(state, name)  # NB: joined after the round opened: it still gets the model

    def _parameters(self, route: bytes, state: LearningSession, msg: wire.Message, checksums: list[int]) -> None:
        """A participant's ``get_parameters``: the first becomes the initial model (Flower's default);
        later ones are acknowledged and dropped."""
        state.routes[msg.participant] = route
        ids = {"session": state.name, "participant": msg.participant}
        adopted = not state.has_model
        if adopted:
            try:
                state.adopt(list(msg.arrays), names_of(msg.meta))
            except (LayoutError, ValueError) as exc:
                raise wire.WireError("shape_mismatch", f"parameters refused as the initial model: {exc}") from None
            log.info("initial model from %s: %d parameters", msg.participant, state.size, extra=ids)
        self.link.reply(route, kind="ack", session=state.name, participant=msg.participant, round=msg.round,
                        meta={"seq": msg.seq})
        if adopted and state.open:
            for name in sorted(state.members - state.contributed.keys()):
                if name in state.routes:
                    self._send_model(state, name)

    def _evaluation(self, route: bytes, state: LearningSession, msg: wire.Message, checksums: list[int]) -> None:
        if state.evaluation is None:
            raise wire.WireError("stale_round", f"no evaluation of round {msg.round} is being collected")
        state.evaluation.add(msg.participant, msg.round, msg.meta)
        self.link.reply(route, kind="ack", session=state.name, participant=msg.participant, round=msg.round,
                        meta={"seq": msg.seq})
        if state.evaluation.complete:
            self._finish_evaluation(state)

    def _update(self, route: bytes, state: LearningSession, msg: wire.Message, checksums: list[int]) -> None:
        weight = state.accept(participant=msg.participant, round=msg.round, arrays=msg.arrays, meta=msg.meta)
        state.routes[msg.participant] = route  # NB: a reconnected DEALER has a new routing id
        metrics = self.link.metrics
        metrics.contributions_accepted.labels(kind="update").inc()
        compressed = msg.meta.get("compression")
        codec = str(compressed.get("codec", "dense")) if isinstance(compressed, Mapping) else "dense"
        metrics.update_bytes.labels(codec=codec).inc(msg.nbytes)
        state.update_bytes += msg.nbytes
        self.link.reply(
            route, kind="ack", session=state.name, participant=msg.participant, round=msg.round, meta={"seq": msg.seq}
        )
        if state.unmask_due:
            state.unmask_due = False
            self._start_unmask(state)
        latency_ms = (time.monotonic() - state.opened_at) * 1000
        self.link.event(
            state.name,
            "contribution",
            participant=msg.participant,
            round=msg.round,
            bytes=msg.nbytes,
            weight=weight,
            checksum=checksums[0] if checksums else 0,  # NB: the header's XXH3 digest, verified against the payload
            latency_ms=latency_ms,
        )
        log.info(
            "update folded (%d bytes)",
            msg.nbytes,
            extra={"session": state.name, "participant": msg.participant, "round": msg.round},
        )

    # --- federated evaluation (fedattn.aggregator.evaluation) -------------------------------------

    @staticmethod
    def _evaluates(state: LearningSession, round: int) -> bool:
        """Whether round ``round``'s model is evaluated: every k-th round and the last, when on."""
        settings = state.spec.evaluation
        if settings is None or not state.has_model:
            return False
        return round % settings.every_rounds == 0 or round >= state.spec.rounds

    def _start_evaluation(self, state: LearningSession) -> None:
        """Send the round's new global model to its contributors for evaluation."""
        assert state.spec.evaluation is not None
        asked = frozenset(n for n in sorted(state.contributed) if n in state.routes
                          and self._send_model(state, n, kind="evaluate"))
        deadline = time.monotonic() + state.spec.evaluation.timeout_seconds
        state.evaluation = RoundEvaluation(round=state.round, asked=asked, deadline=deadline)
        log.info("evaluating with %d participants", len(asked), extra={"session": state.name, "round": state.round})
        if not asked:
            self._finish_evaluation(state)

    def _finish_evaluation(self, state: LearningSession) -> None:
        """Put the evaluation into the round's result and answer the deferred close."""
        evaluation, result = state.evaluation, state.last_result
        assert evaluation is not None and result is not None
        evaluation.finished = True
        result.evaluation = evaluation.summary()
        self.link.answer_deferred(state.name)

    def tick(self, state: LearningSession, now: float) -> None:
        evaluation = state.evaluation
        if evaluation is not None and not evaluation.finished and now >= evaluation.deadline:
            log.warning("evaluation timed out; missing %s", sorted(evaluation.asked - evaluation.reports.keys()),
                        extra={"session": state.name, "round": evaluation.round})
            self._finish_evaluation(state)
        self._tick_secure(state, now)

    # --- secure aggregation (fedattn.aggregator.secure) ------------------------------------------

    def _secagg(self, route: bytes, state: LearningSession, msg: wire.Message, checksums: list[int]) -> None:
        secure, name = state.secure, msg.participant
        if secure is None or msg.round != state.round:
            raise wire.WireError("stale_round", f"no secure aggregation round {msg.round} is open")
        state.routes[name] = route
        if msg.kind == "secagg_keys":
            keys = secure.add_key(name, msg.meta.get("public_key"))
            if keys is not None:
                for member in sorted(keys):
                    self._to_member(state, member, "secagg_keys", {"keys": keys})
        elif msg.kind == "secagg_shares":
            for peer, bundle in secure.route_shares(name, msg.meta.get("sealed")).items():
                self._to_member(state, peer, "secagg_shares", {"from": {name: bundle}})
        elif secure.add_reveal(name, msg.meta.get("shares")):
            if secure.unmask_started is not None:
                self.link.metrics.secagg_unmask_seconds.observe(time.perf_counter() - secure.unmask_started)
            log.info("secure sum unmasked", extra={"session": state.name, "round": state.round})
            self.link.answer_deferred(state.name)

    def _to_member(self, state: LearningSession, name: str, kind: str, meta: dict[str, Any]) -> None:
        route = state.routes.get(name)
        if route is not None:
            self.link.reply(route, kind=kind, session=state.name, participant=name, round=state.round, meta=meta)

    def _start_unmask(self, state: LearningSession) -> None:
        """Fix who survived and ask each survivor for its shares (raises ValueError below the threshold)."""
        assert state.secure is not None
        survivors, dropped = state.secure.start_unmask()
        if state.secure.unmask_started is None:
            state.secure.unmask_started = time.perf_counter()
            state.secure.asked_at = time.monotonic()
        for name in survivors:
            self._to_member(state, name, "secagg_unmask", {"survivors": survivors, "dropped": dropped})
        log.info(
            "unmasking with %d survivors, %d dropped",
            len(survivors),
            len(dropped),
            extra={"session": state.name, "round": state.round},
        )

    def _tick_secure(self, state: LearningSession, now: float) -> None:
        """Secure aggregation waits at most ``roundTimeoutSeconds`` per phase: a member whose key never
        comes is excluded (the others go on), a round whose reveals never reach the threshold closes
        keeping the old model (``model_kept`` names those that did not reveal); both are recorded
        (``secagg_excluded`` / ``secagg_failed`` events). Before, one silent member stalled it forever."""
        secure = state.secure
        if secure is None or secure.failed is not None or secure.mean is not None or not state.open:
            return
        timeout = state.timeout_seconds
        if secure.server is None and secure.keys and now - state.opened_at >= timeout:
            keys = secure.give_up_waiting_for_keys()
            if secure.excluded:
                why = "; ".join(f"{n}: {reason}" for n, reason in sorted(secure.excluded.items()))
                self.link.event(
                    state.name, "secagg_excluded", round=state.round, participants=sorted(secure.excluded), message=why
                )
            for member in sorted(keys or {}):
                self._to_member(state, member, "secagg_keys", {"keys": keys})
        elif secure.asked_at is not None and now - secure.asked_at >= timeout:
            secure.give_up_waiting_for_reveals()
        if secure.failed is not None:
            log.error("%s", secure.failed, extra={"session": state.name, "round": state.round})
            self.link.event(state.name, "secagg_failed", round=state.round, message=secure.failed)
            self.link.answer_deferred(state.name)  # NB: the waiting ctl_close_round closes, model kept, saying why

    # --- control link -----------------------------------------------------------------------------

    def ctl_open_round(self, state: LearningSession, msg: wire.Message) -> dict[str, Any]:
        names = [str(n) for n in msg.meta.get("participants") or []]
        state.open_round(msg.round, names)
        if self.checkpoint_dir is not None and state.checkpoint_every:
            checkpoint.save_open_round(self.checkpoint_dir, state.name, round=msg.round, participants=names)
        sent = [n for n in names if n in state.routes and self._send_model(state, n)]
        log.info("round opened", extra={"session": state.name, "round": msg.round})
        return {"sent": sent, "waiting_for_hello": [n for n in names if n not in sent]}

    def ctl_close_round(self, state: LearningSession, msg: wire.Message) -> dict[str, Any]:
        """The round's result; :data:`DEFERRED` while a secure sum still waits for its unmasking, or
        while the round's federated evaluation is collected (fedattn.aggregator.evaluation).

        ``meta.contributed`` names the updates the coordinator recorded for the round; one this process
        does not hold (it restarted after acknowledging it) refuses the close with :class:`MissingUpdates`,
        so no acknowledged update is left out of the model.
        """
        expected = msg.meta.get("contributed")
        if state.open and msg.round == state.round and isinstance(expected, list):
            missing = sorted({str(n) for n in expected} - set(state.contributed))
            if missing:
                raise MissingUpdates(msg.round, missing)
        secure = state.secure
        waiting = secure is not None and secure.mean is None and secure.failed is None
        if state.open and msg.round == state.round and waiting and state.contributed:
            self._start_unmask(state)  # NB: the ones whose input did not arrive count as dropped
            return DEFERRED  # answered when enough survivors revealed their shares
        result = state.close_round(msg.round)
        if self._evaluates(state, result.round):
            evaluation = state.evaluation
            if evaluation is None or evaluation.round != result.round:
                self._start_evaluation(state)
            if state.evaluation is not None and not state.evaluation.finished:
                return DEFERRED  # answered when every contributor evaluated, or at the timeout
        output = self.outputs.get(state.name)
        if output is not None and state.layout is not None:
            output.round_closed(round=result.round, names=state.layout.names, arrays=state.global_arrays(),
                                result=result.meta())
        metrics = self.link.metrics
        metrics.aggregation_seconds.observe(result.aggregation_seconds)
        metrics.rounds_closed.inc()
        if result.epsilon is not None:
            metrics.dp_epsilon.labels(session=state.name).set(result.epsilon)
        if state.budget is not None:
            metrics.dp_epsilon_target.labels(session=state.name).set(state.budget.target_epsilon)
        if result.accuracy is not None:
            metrics.accuracy.labels(session=state.name).set(result.accuracy)
        for name, score in (result.reliability or {}).items():
            metrics.reliability.labels(session=state.name, participant=name).set(score)
        if result.model_kept:  # NB: recorded in the store as an event, next to the round
            log.error("round's model not taken: %s", result.model_kept, extra={"session": state.name})
            self.link.event(state.name, "model_kept", round=msg.round, message=result.model_kept)
        every = state.checkpoint_every
        if self.checkpoint_dir is not None and every:
            if msg.round % every == 0:
                self._checkpoint(state)
            checkpoint.clear_open_round(self.checkpoint_dir, state.name)
        meta = result.meta()
        log.info("round closed: %s", meta, extra={"session": state.name, "round": msg.round})
        return meta
