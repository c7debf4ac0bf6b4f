"""The round driver's dispatch table covers every command the session machine can return."""

from __future__ import annotations

import time
import typing

from fedattn.coordinator import rounds
from fedattn.coordinator.driver import Configure, Revoke, RoundDriver
from fedattn.coordinator.metrics import Metrics
from fedattn.coordinator.session import Sessions


async def _no_eviction(session, participant: str, round_: int) -> None:
    raise AssertionError("not called: the table is only looked at")


def test_every_machine_command_and_driver_command_has_exactly_one_handler():
    metrics = Metrics()
    # NB: building the table touches neither the store nor the link, so none is given.
    driver = RoundDriver(sessions=Sessions(metrics), store=None, metrics=metrics, clock=time.time, evict=_no_eviction)
    assert set(driver.handlers) == {*typing.get_args(rounds.Command), Configure, Revoke}
