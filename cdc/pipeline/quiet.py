"""When the replication stream went quiet: a lone change need not wait for company.

The buffer waits `max_age` for more changes to batch with. When the reader has read everything
the server sent and the last transaction is complete, nothing more is on its way right now: a
lone change is then due after a short grace (`buffer.idle_flush`), which catches a burst's next
transaction, while changes that keep arriving still batch up to `max_age` (each frame with data
starts the quiet over). The reader reports (`heard`, `drained`); the flusher asks `due_at` and
passes it to `ChangeBuffer.flush_decision`. Pure: the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Quiet:
    """Since when the stream has been quiet, and the grace before that makes changes due."""

    grace: float | None  # None: never (changes wait max_age)
    since: float | None = None

    def heard(self) -> None:
        """The reader got data: whatever it completes has company coming, maybe."""
        self.since = None

    def drained(self, at_boundary: bool, now: float) -> bool:
        """The reader holds everything the server sent; `at_boundary`: no transaction is open.
        True when the stream just went quiet (the flusher should look again)."""
        if self.grace is None or self.since is not None or not at_boundary:
            return False
        self.since = now
        return True

    def due_at(self) -> float | None:
        """From when a lone change is due (None: not quiet, or no idle flush)."""
        if self.grace is None or self.since is None:
            return None
        return self.since + self.grace
