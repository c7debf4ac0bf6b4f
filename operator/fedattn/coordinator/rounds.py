"""The session state machine, pure: events and the current time in, commands out, no I/O.

The coordinator feeds it what participants (:mod:`fedattn.coordinator.service`) and the aggregator
(:mod:`fedattn.coordinator.events`) say; its driver (:mod:`fedattn.coordinator.driver`) carries out
the commands it returns (open/close a round at the aggregator, finish, fail), then reports back
(``round_closed``). Time is an argument, so tests run it on a fake clock.

Learning: ``Pending`` until ``min_participants`` have joined and said hello; each round opens
with every live (joined, heartbeating) participant and closes when every live member has
contributed, or ``wait_after_min`` after the quorum has, or at ``round_timeout`` (with what it has
if that is a quorum, else the session fails with ``QuorumLost``). Attention: ``Running`` once a
quorum has joined; the aggregator runs the KV barriers; ``Succeeded`` when every participant that
joined reported done. In both, a participant silent for longer than ``heartbeat_timeout`` is
marked ``Failed`` and left out of later rounds, ``active_deadline`` fails the session with
``DeadlineExceeded``, and a session still ``Pending`` ``start_timeout`` after its creation (say every
participant crashed before the first round) fails with ``NeverStarted``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from fedattn.api.schema import ParticipantPhase, SessionPhase

PENDING, RUNNING, SUCCEEDED, FAILED = (
    SessionPhase.PENDING,
    SessionPhase.RUNNING,
    SessionPhase.SUCCEEDED,
    SessionPhase.FAILED,
)
#: participant phases (FedParticipant status)
P_PENDING, P_JOINED, P_CONTRIBUTING, P_DONE, P_FAILED, P_EVICTED = (
    ParticipantPhase.PENDING,
    ParticipantPhase.JOINED,
    ParticipantPhase.CONTRIBUTING,
    ParticipantPhase.DONE,
    ParticipantPhase.FAILED,
    ParticipantPhase.EVICTED,
)
LIVE = frozenset({P_JOINED, P_CONTRIBUTING})


@dataclass(frozen=True)
class Settings:
    """What the machine needs from a (defaulted) FedSession spec; durations in seconds."""

    mode: str
    participants: tuple[str, ...]
    min_participants: int
    rounds: int
    round_timeout: float
    wait_after_min: float
    heartbeat_timeout: float
    #: a session still Pending this long after creation fails with NeverStarted
    start_timeout: float
    active_deadline: float | None = None


# -- commands (what the driver must do) ---------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The session is running (record ``started_at``)."""


@dataclass(frozen=True)
class OpenRound:
    round: int
    participants: tuple[str, ...]


@dataclass(frozen=True)
class CloseRound:
    round: int


@dataclass(frozen=True)
class Finish:
    """Success: tell the aggregator to send ``done``."""

    reason: str


@dataclass(frozen=True)
class Fail:
    reason: str
    message: str


@dataclass(frozen=True)
class MarkFailed:
    participant: str
    reason: str


Command = Start | OpenRound | CloseRound | Finish | Fail | MarkFailed


class Verdict(enum.StrEnum):
    """What became of a contribution the aggregator reported; not ``accepted`` is a rejection reason."""

    ACCEPTED = "accepted"
    LATE = "late"
    DUPLICATE = "duplicate"
    NOT_IN_ROUND = "not_in_round"
    UNKNOWN = "unknown_participant"


@dataclass
class Member:
    phase: str = P_PENDING
    last_seen: float | None = None
    ready: bool = False  # said hello to the aggregator


@dataclass
class Round:
    number: int
    members: frozenset[str]
    opened_at: float
    contributed: set[str] = field(default_factory=set)
    quorum_at: float | None = None
    closing: bool = False


class SessionMachine:
    def __init__(self, settings: Settings, *, now: float) -> None:
        self.settings = settings
        self.created_at = now
        self.phase = PENDING
        self.message = ""
        self.members = {name: Member() for name in settings.participants}
        self.round: Round | None = None
        self.rounds_closed = 0
        self.waiting_since: float | None = None  # learning, between rounds, below quorum

    @classmethod
    def resume(
        cls,
        settings: Settings,
        *,
        created_at: float,
        phase: str,
        message: str,
        member_phases: dict[str, str],
        rounds_closed: int,
        open_round: tuple[int, float, set[str]] | None,
        now: float,
    ) -> SessionMachine:
        """A machine rebuilt from stored state after a coordinator restart.

        Live participants get a fresh heartbeat grace period from ``now``; who is ready (said hello)
        is learnt again from the aggregator. ``open_round`` is (number, opened_at, contributed).
        """
        machine = cls(settings, now=created_at)
        machine.phase, machine.message, machine.rounds_closed = phase, message, rounds_closed
        for name, member_phase in member_phases.items():
            if name in machine.members:
                machine.members[name] = Member(phase=member_phase, last_seen=now)
        if open_round is not None and not machine.finished:
            number, opened_at, contributed = open_round
            members = frozenset(machine.live()) | frozenset(contributed)
            machine.round = Round(number=number, members=members, opened_at=opened_at, contributed=set(contributed))
            if len(contributed) >= settings.min_participants:
                machine.round.quorum_at = now
        elif phase == RUNNING and settings.mode == "learning":
            machine.waiting_since = now
        return machine

    # -- queries ----------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.phase in (SUCCEEDED, FAILED)

    def live(self) -> list[str]:
        return [n for n, m in self.members.items() if m.phase in LIVE]

    def ready(self) -> list[str]:
        return [n for n, m in self.members.items() if m.phase in LIVE and m.ready]

    def deadline(self) -> float | None:
        """When the open round times out (None when no round is open)."""
        if self.round is None or self.round.closing:
            return None
        return self.round.opened_at + self.settings.round_timeout

    # -- events -----------------------------------------------------------------------------------

    def join(self, name: str, *, now: float) -> list[Command]:
        """A participant joined (or re-joined after being marked Failed)."""
        member = self.members[name]
        if member.phase in (P_PENDING, P_FAILED):
            member.phase = P_JOINED
        member.last_seen = now
        return self.tick(now=now)

    def heartbeat(self, name: str, *, now: float) -> None:
        self.members[name].last_seen = now

    def hello(self, name: str, *, now: float) -> list[Command]:
        member = self.members[name]
        member.ready = True
        member.last_seen = now
        return self.tick(now=now)

    def contribution(self, name: str, round: int, *, now: float) -> tuple[Verdict, list[Command]]:
        """The aggregator accepted an update; the verdict says whether it counts for the round."""
        member = self.members.get(name)
        if member is None:
            return Verdict.UNKNOWN, []
        current = self.round
        # NB: a contribution may arrive after we asked to close: the aggregator accepted it first.
        if self.finished or current is None or current.number != round:
            return Verdict.LATE, []
        if name not in current.members:
            return Verdict.NOT_IN_ROUND, []
        if name in current.contributed:
            return Verdict.DUPLICATE, []
        current.contributed.add(name)
        member.last_seen = now
        if member.phase == P_JOINED:
            member.phase = P_CONTRIBUTING
        if current.quorum_at is None and len(current.contributed) >= self.settings.min_participants:
            current.quorum_at = now
        return Verdict.ACCEPTED, self.tick(now=now)

    def phase_after_leave(self, name: str) -> str:
        """What :meth:`leave` makes of ``name`` (Done; an evicted one stays Evicted), to store it first."""
        return P_EVICTED if self.members[name].phase == P_EVICTED else P_DONE

    def leave(self, name: str, *, now: float) -> list[Command]:
        """The participant is done (attention: it reported its result)."""
        member = self.members[name]
        member.phase = self.phase_after_leave(name)
        member.last_seen = now
        return self.tick(now=now)

    def evict(self, name: str, *, now: float) -> list[Command]:
        self.members[name].phase = P_EVICTED
        return self.tick(now=now)

    def round_closed(self, round: int, *, now: float) -> list[Command]:
        """The aggregator closed ``round``: finish after the last one, else open the next."""
        if self.round is None or self.round.number != round or self.finished:
            return []
        self.rounds_closed = round
        self.round = None
        if round >= self.settings.rounds:
            self.phase = SUCCEEDED
            self.message = f"{round} rounds completed"
            return [Finish(reason="completed")]
        self.waiting_since = now
        return self.tick(now=now)

    def updates_lost(self, round: int, participants: list[str], *, now: float) -> list[Command]:
        """The aggregator does not hold these members' updates for the closing ``round`` (it restarted
        after acknowledging them): the round is open again and waits for them to be sent again."""
        current = self.round
        if self.finished or current is None or current.number != round or not current.closing:
            return []
        current.closing = False
        current.contributed -= set(participants)
        if len(current.contributed) < self.settings.min_participants:
            current.quorum_at = None
        return self.tick(now=now)

    def stop(self, reason: str, message: str) -> list[Command]:
        """A planned early end (e.g. ``PrivacyBudgetExhausted``): the model so far is the result.

        A round we asked to close counts as closed; one still open (its opening was refused) is dropped.
        """
        if self.finished:
            return []
        if self.round is not None and self.round.closing:
            self.rounds_closed = self.round.number
        self.round = None
        self.phase, self.message = SUCCEEDED, f"{reason}: {message}"
        return [Finish(reason=reason)]

    def fail(self, reason: str, message: str) -> list[Command]:
        """The driver could not carry out a command (e.g. the aggregator is unreachable)."""
        if self.finished:
            return []
        self.phase, self.message = FAILED, f"{reason}: {message}"
        return [Fail(reason=reason, message=message)]

    # -- time ---------------------------------------------------------------------------------------

    def tick(self, *, now: float) -> list[Command]:
        """Everything that is due at ``now``; call it after every event and periodically."""
        if self.finished:
            return []
        deadline = self.settings.active_deadline
        if deadline is not None and now >= self.created_at + deadline:
            return self.fail("DeadlineExceeded", f"session exceeded activeDeadlineSeconds={deadline:g}")
        if self.phase == PENDING and now >= self.created_at + self.settings.start_timeout:
            return self._never_started()
        commands: list[Command] = self._expire_heartbeats(now)
        if self.settings.mode == "attention":
            commands += self._attention(now)
        else:
            commands += self._learning(now)
        return commands

    def _expire_heartbeats(self, now: float) -> list[Command]:
        out: list[Command] = []
        limit = self.settings.heartbeat_timeout
        for name, member in self.members.items():
            if member.phase in LIVE and member.last_seen is not None and now - member.last_seen > limit:
                member.phase = P_FAILED
                member.ready = False
                out.append(MarkFailed(participant=name, reason=f"no heartbeat for more than {limit:g} s"))
        return out

    def _never_started(self) -> list[Command]:
        """Pending past ``start_timeout``: e.g. every participant crashed before the first round."""
        ready = self.ready() if self.settings.mode == "learning" else self.live()
        return self.fail(
            "NeverStarted",
            f"only {len(ready)} of minParticipants={self.settings.min_participants} participants were ready"
            f" within startTimeoutSeconds={self.settings.start_timeout:g}",
        )

    def _quorum_lost(self, what: str) -> list[Command]:
        return self.fail("QuorumLost", f"{what}; minParticipants is {self.settings.min_participants}")

    def _attention(self, now: float) -> list[Command]:
        quorum = self.settings.min_participants
        if self.phase == PENDING:
            if len(self.live()) < quorum:
                return []
            self.phase = RUNNING
            return [Start()]
        phases = [m.phase for m in self.members.values()]
        done, live = phases.count(P_DONE), sum(p in LIVE for p in phases)
        if live == 0 and done >= quorum:
            self.phase = SUCCEEDED
            self.message = f"{done} participants reported their results"
            return [Finish(reason="completed")]
        if live + done < quorum:
            return self._quorum_lost(f"only {live} live and {done} done participants are left")
        return []

    def _learning(self, now: float) -> list[Command]:
        if self.round is None:
            return self._maybe_open(now)
        current = self.round
        if current.closing:
            return []
        quorum = self.settings.min_participants
        live = set(self.live())
        outstanding = (current.members & live) - current.contributed
        got = len(current.contributed)
        if got + len(outstanding) < quorum:
            return self._quorum_lost(f"round {current.number} can get at most {got + len(outstanding)} updates")
        timed_out = now >= current.opened_at + self.settings.round_timeout
        waited = current.quorum_at is not None and now >= current.quorum_at + self.settings.wait_after_min
        if not outstanding or waited or (timed_out and got >= quorum):
            current.closing = True
            return [CloseRound(round=current.number)]
        if timed_out:
            return self._quorum_lost(f"round {current.number} timed out with {got} updates")
        return []

    def _maybe_open(self, now: float) -> list[Command]:
        quorum = self.settings.min_participants
        ready = self.ready()
        if len(ready) >= quorum:
            # NB: every live participant is in the round; one that says hello late still gets the model.
            live = self.live()
            number = self.rounds_closed + 1
            self.round = Round(number=number, members=frozenset(live), opened_at=now)
            self.waiting_since = None
            commands: list[Command] = []
            if self.phase == PENDING:
                self.phase = RUNNING
                commands.append(Start())
            return [*commands, OpenRound(round=number, participants=tuple(sorted(live)))]
        if self.waiting_since is not None and now >= self.waiting_since + self.settings.round_timeout:
            return self._quorum_lost(f"only {len(ready)} participants were ready for round {self.rounds_closed + 1}")
        return []
