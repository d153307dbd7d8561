"""When `cdc run` starts a session again after a failure: a small pure policy, no clock, no I/O.

The delay grows with each consecutive failure (exponential, with jitter so a fleet of streamers
does not reconnect in lockstep) up to a cap, and goes back to its start once a session streamed
for a healthy while: a process that ran for weeks should recover from its next blip in a second,
not in the half-minute its earlier blips had built up.
"""

from __future__ import annotations

from dataclasses import dataclass

# A session that streamed this long was healthy: the next failure counts as the first.
HEALTHY_AFTER = 60.0


@dataclass
class ReconnectBackoff:
    """Consecutive failures and the delay each one earns. `failed` is the only mutator."""

    base: float = 0.5
    cap: float = 60.0
    # Doublings before the delay stops growing: 0.5 s doubled 6 times is a 32 s ceiling.
    max_doublings: int = 6
    healthy_after: float = HEALTHY_AFTER
    failures: int = 0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError("base must be positive and cap at least base")

    def failed(self, streamed_for: float, rand: float) -> float:
        """Seconds to wait before the next session, after one that streamed `streamed_for`
        seconds (0 when it never reached streaming) ended in failure.

        `rand` in [0, 1) is the jitter: the delay is between half and all of the step's ceiling.
        """
        if streamed_for >= self.healthy_after:
            self.failures = 0
        self.failures += 1
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures, self.max_doublings))
        return ceiling * (0.5 + min(max(rand, 0.0), 1.0) / 2)
