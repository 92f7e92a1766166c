"""`edgefleet-agent run`: when to poll the origin, and what a node does between polls.

A fleet comes back together: a regional power cut ends, a cellular network returns, a
thousand stores open at nine. If every node polled as soon as it started, and retried on the
same schedule after a failure, the origin would see the whole fleet in the same second, again
and again. So the first poll of `run` waits a random time up to `startJitter` (by default the
poll interval), and retries after failures back off exponentially with full jitter, capped at
32 poll intervals and at `maxBackoff`. bench/bench_herd.py measures the spread.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from node_agent.config import AgentConfig
from node_agent.journal import JournalError, JournalFile

from reconciler.errors import EdgeFleetError

if TYPE_CHECKING:
    from node_agent.agent import Outcome

DEFAULT_POLL_S = 60
# Exit codes after which the next poll is a retry: the update failed (1), the cycle crashed
# (70), the origin was unreachable (75). A rejected release (3) is not retried sooner: the
# next release will come at the usual pace.
RETRY_CODES = frozenset({1, 70, 75})
# The backoff doubles five times, up to 32 poll intervals; `maxBackoff` caps it in seconds too.
MAX_DOUBLINGS = 5
# A retry waits at least a tenth of the interval and never less than a second: full jitter
# alone can draw a delay near zero, and a node that fails fast would then spin against an
# origin that is already in trouble.
MIN_RETRY_S = 1.0
RETRY_FLOOR_FRACTION = 0.1
# Phases of a transaction that leave a bank in trial behind `current`: the restart re-runs
# its checks (or rolls back) at once instead of serving an unchecked bank for a jitter.
URGENT_PHASES = frozenset({"trial", "rolling-back"})


class Cycles(Protocol):
    """What the loop drives: `node_agent.agent.Agent`, or a stand-in in a test."""

    def once(self) -> Outcome: ...


@dataclass(frozen=True)
class Poll:
    """One cycle of the loop, as `on_poll` hears of it once the cycle is done."""

    number: int  # 1 for the first poll after start
    started: float  # time.monotonic() when the cycle began
    exit_code: int
    failures: int  # consecutive failed cycles, this one included
    next_in: float  # seconds until the next poll


def poll_interval(config: AgentConfig, fleet_interval: int | None) -> int:
    """The interval in effect: the configuration's, else the fleet's, else 60 s."""
    return config.poll_interval or fleet_interval or DEFAULT_POLL_S


def first_delay(config: AgentConfig, interval: float, rng: random.Random) -> float:
    """Seconds before the first poll of `run`: uniform in [0, startJitter], startJitter
    being the interval in effect unless configured; 0 when it is configured to 0s."""
    jitter = interval if config.start_jitter is None else config.start_jitter
    return rng.uniform(0.0, float(jitter)) if jitter > 0 else 0.0


def retry_ceiling(interval: float, failures: int, max_backoff: float) -> float:
    """The longest wait after `failures` consecutive failures: one interval after the first,
    doubling after each one more, capped at 32 intervals and at `max_backoff`."""
    doublings = min(max(failures, 1) - 1, MAX_DOUBLINGS)
    return float(min(interval * 2**doublings, max_backoff))


def retry_floor(interval: float, ceiling: float) -> float:
    """The shortest wait before a retry (never above the ceiling)."""
    return min(max(MIN_RETRY_S, interval * RETRY_FLOOR_FRACTION), ceiling)


def next_delay(
    interval: float,
    failures: int,
    rng: random.Random | None = None,
    max_backoff: float = 3600.0,
) -> float:
    """Seconds until the next poll: the interval with +-10% jitter after a good cycle;
    after failures, full-jitter exponential backoff, uniform in [floor, ceiling].

    Full jitter, not equal jitter (uniform in [ceiling/2, ceiling]): nodes that failed
    together retry together unless their waits are spread, and full jitter draws from twice
    the width. bench/bench_herd.py measured 200 nodes coming back from an outage at a peak of
    27 a second against 32, and sooner (median 5.5 s against 8.9 s), for some more attempts
    while the origin was down. Its one weakness, a wait drawn near zero, is what the floor is
    for."""
    rng = rng or random.Random()
    if failures <= 0:
        return float(interval * rng.uniform(0.9, 1.1))
    ceiling = retry_ceiling(interval, failures, max_backoff)
    return float(rng.uniform(retry_floor(interval, ceiling), ceiling))


def _fleet_interval_and_urgency(config: AgentConfig) -> tuple[int | None, bool]:
    """The fleet's poll interval as the journal last saw it, and whether a trial was cut
    short. Read without the lock, as `status` does: a wrong guess only shifts the first
    poll, and a journal that cannot be read is reported by the cycle itself."""
    try:
        journal = JournalFile(config.state_dir / "state.json").load(config.node)
    except JournalError:
        return None, False
    txn = journal.transaction
    return journal.poll_interval, txn is not None and txn.phase in URGENT_PHASES


def poll_loop(
    agent: Cycles,
    config: AgentConfig,
    log: Any,
    stop: threading.Event,
    rng: random.Random | None = None,
    on_poll: Callable[[Poll], None] | None = None,
) -> None:
    """Poll until `stop` is set: the first poll after a jitter, then one cycle every interval
    (jittered), or sooner and then later with backoff after failures. A cycle in hand always
    finishes: `stop` is only looked at between cycles."""
    rng = rng or random.Random()
    fleet_interval, urgent = _fleet_interval_and_urgency(config)
    interval = poll_interval(config, fleet_interval)
    log.info("agent.start", interval=config.poll_interval or "fleet", origin=config.repo)
    delay = 0.0 if urgent else first_delay(config, interval, rng)
    log.info(
        "agent.first_poll_in",
        next_in=round(delay, 1),
        start_jitter=interval if config.start_jitter is None else config.start_jitter,
        reason="a trial to finish" if urgent else "start jitter",
    )
    stop.wait(delay)
    failures = 0
    number = 0
    while not stop.is_set():
        number += 1
        started = time.monotonic()
        try:
            outcome = agent.once()
            code = outcome.exit_code
            fleet_interval = outcome.journal.poll_interval
        except EdgeFleetError as exc:
            log.error("cycle.error", reason=str(exc), exit_code=exc.exit_code)
            code = exc.exit_code
        except Exception as exc:
            # A service that dies on a surprise is restarted in a loop by systemd; one that
            # logs it and backs off keeps its state and its schedule.
            log.exception("cycle.crashed", reason=f"{type(exc).__name__}: {exc}")
            code = 70
        interval = poll_interval(config, fleet_interval)
        failures = failures + 1 if code in RETRY_CODES else 0
        delay = next_delay(interval, failures, rng, config.max_backoff)
        log.info("cycle.done", exit_code=code, next_in=round(delay, 1))
        if on_poll is not None:
            on_poll(Poll(number, started, code, failures, delay))
        stop.wait(delay)
    log.info("agent.stopped")
