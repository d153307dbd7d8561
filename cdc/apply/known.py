"""What this process knows the sink holds for rows it recently wrote or checked.

A bounded, least-recently-used map from (source table, source id) to a fingerprint of the
row's content, model and metadata as last committed. A batch skips the sink lookup for rows
whose fingerprint is unchanged: an update of a column that is neither content nor metadata then
costs a hash and a dict lookup instead of a round trip. Only this process writes the sink for its
slot, and entries change only after a sink commit, so the map never claims more than the sink
holds; a row it forgot is simply looked up again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable

from cdc.rows import RowState, SourceKey


def fingerprint(row: RowState, model: str) -> bytes:
    """A digest of the model, the content and the metadata, exact up to blake2b collisions.

    Every part is length-prefixed so no text can pass for a boundary. Metadata keys are
    left out: they are the table's configured columns, fixed for the life of the process.
    """
    parts = [model, row.content]
    parts += ["\x00" if value is None else value for value in row.metadata.values()]
    framed = "".join(f"{len(part)}:{part}" for part in parts)
    return hashlib.blake2b(framed.encode(), digest_size=16).digest()


class KnownRows:
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[SourceKey, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def unchanged(self, key: SourceKey, print_: bytes) -> bool:
        """Whether the sink is known to hold exactly this fingerprint for `key`."""
        if self._entries.get(key) != print_:
            return False
        self._entries.move_to_end(key)
        return True

    def remember(self, key: SourceKey, print_: bytes) -> None:
        entries = self._entries
        entries[key] = print_
        entries.move_to_end(key)
        if len(entries) > self._capacity:
            entries.popitem(last=False)

    def forget(self, keys: Iterable[SourceKey]) -> None:
        for key in keys:
            self._entries.pop(key, None)

    def forget_tables(self, tables: Iterable[str]) -> None:
        gone = set(tables)
        if gone:
            for key in [key for key in self._entries if key[0] in gone]:
                del self._entries[key]
