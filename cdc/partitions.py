"""Which of the sink's parallel writers (`sink.writers`) applies a row's changes.

A row always goes to the same writer, so its changes reach the sink in commit order, and the
writers never touch the same row: each commits on its own, with a position of its own
(`cdc.replication.positions.WriterPositions`). The partition must be the same in every process
and every release (it is stored, in effect, with each writer's position), so it is a CRC-32 of
the row's table and id, never Python's salted `hash`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar
from zlib import crc32

T = TypeVar("T")


def partition_of(table: str, source_id: str, writers: int) -> int:
    """The writer, of `writers`, that applies the changes of this row."""
    if writers == 1:
        return 0
    return crc32(f"{table}\0{source_id}".encode()) % writers


def split(items: Sequence[T], key: Callable[[T], tuple[str, str]], writers: int) -> list[list[T]]:
    """`items` by writer, each writer's in their original order."""
    parts: list[list[T]] = [[] for _ in range(writers)]
    for item in items:
        table, source_id = key(item)
        parts[partition_of(table, source_id, writers)].append(item)
    return parts
