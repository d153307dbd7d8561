"""The Python API of `cdc search` and `cdc similar`, as the README documents it.

`search(settings, provider, text, table=, k=, where=)` and
`similar(settings, table=, source_id=, in_table=, k=, where=)` return `Hit`s. The commands live
in `cdc.commands.search`, the queries in `cdc.sink.nearest`; this module only names them.
"""

from __future__ import annotations

from cdc.commands.search import NoVector, search, similar
from cdc.sink.nearest import Hit

__all__ = ["Hit", "NoVector", "search", "similar"]
