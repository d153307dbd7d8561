"""One error root for wal2vec, with the exit code and retry policy each kind implies.

Messages say what is wrong and what to do about it; they never contain secrets.
"""

from __future__ import annotations


class CdcError(Exception):
    """Root of every error wal2vec raises on purpose.

    `retriable` tells the pipeline whether waiting and trying again can help;
    `exit_code` is what the CLI exits with when the error ends a command.
    """

    exit_code = 1
    retriable = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(CdcError):
    """Bad usage or configuration: a key, a table, a column or a value is wrong."""

    exit_code = 2


class SourceUnavailable(CdcError):
    """A database cannot be reached or used."""

    exit_code = 3
    retriable = True


class SlotLost(CdcError):
    """The replication slot is gone or invalidated; only a resync recovers."""

    exit_code = 3


class EmbeddingUnavailable(CdcError):
    """The embedding service could not be reached or kept failing after retries."""

    exit_code = 3
    retriable = True


class ProtocolError(CdcError):
    """The replication stream carried something this decoder cannot read."""

    exit_code = 3


class LeadershipLost(CdcError):
    """Another instance leads the slot now: this one stops writing and stands by again.

    Not retriable within a session: the runner goes back to the election, not to a restart.
    """

    exit_code = 3
