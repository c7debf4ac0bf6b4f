"""Routes of authenticated ``hello``s for sessions the aggregator does not know yet (configure race).

A participant may say hello before the coordinator's ``ctl_configure`` arrives; its route is kept so
the session, once configured, can send it the model without waiting for another hello. Bounded per
sender (a few sessions each, the newest kept) and in time, so one participant naming thousands of
made-up sessions cannot crowd out anyone else's early hello: the table holds at most
``identities x per_participant`` entries, and the allowlist bounds the identities.
"""

from __future__ import annotations

from collections import OrderedDict


class EarlyHellos:
    def __init__(self, *, per_participant: int = 4, ttl_seconds: float = 600.0) -> None:
        self.per_participant = per_participant
        self.ttl_seconds = ttl_seconds
        self._by_participant: dict[str, OrderedDict[str, tuple[bytes, float]]] = {}

    def remember(self, *, session: str, participant: str, route: bytes, now: float) -> None:
        own = self._by_participant.setdefault(participant, OrderedDict())
        own.pop(session, None)
        own[session] = (route, now)
        while len(own) > self.per_participant:
            own.popitem(last=False)  # NB: the oldest goes; a real session's hello is usually the newest

    def take(self, *, session: str, participant: str, now: float) -> bytes | None:
        """The route remembered for ``participant`` in ``session`` (forgotten once taken), if fresh."""
        own = self._by_participant.get(participant)
        found = own.pop(session, None) if own is not None else None
        if own is not None and not own:
            del self._by_participant[participant]
        if found is None or now - found[1] > self.ttl_seconds:
            return None
        return found[0]

    def __len__(self) -> int:
        return sum(len(own) for own in self._by_participant.values())
