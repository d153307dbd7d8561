"""The `Lsn` value type: a position in the write-ahead log."""

from __future__ import annotations

import re

_LSN_TEXT = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


class Lsn(int):
    """A WAL position; an int with PostgreSQL's `X/Y` text form."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse PostgreSQL's `pg_lsn` text form, e.g. ``16/B374D848``."""
        match = _LSN_TEXT.match(text.strip())
        if match is None:
            raise ValueError(f"not an LSN: {text!r} (expected the form 16/B374D848)")
        return cls((int(match.group(1), 16) << 32) | int(match.group(2), 16))

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


ZERO = Lsn(0)


def lsn_text(lsn: Lsn | None) -> str | None:
    """An LSN as a `pg_lsn` query parameter; None stays NULL."""
    return None if lsn is None else str(Lsn(lsn))
