"""The modules of the reader's hot path that the build compiles with mypyc, and which did.

Every change of every published table passes decode -> assemble -> coalesce, so `setup.py`
compiles these modules to C extensions; the same sources run as pure Python when the build was
told not to compile (`WAL2VEC_PURE_PYTHON=1`) or could not. `setup.py` reads `HOT_MODULES`
from this file without importing the package (its dependencies are not installed at build
time), so this module imports nothing from `cdc`.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Final

# Messages (frozen dataclasses that are pickled and built through their slots) and the `Lsn`
# int subclass stay interpreted: mypyc cannot compile either without changing behaviour.
HOT_MODULES: Final = (
    "cdc.replication.pgwire",
    "cdc.replication.pgoutput",
    "cdc.replication.changes",
    "cdc.replication.transactions",
    "cdc.pipeline.buffer",
)


def is_compiled(module: str) -> bool:
    """Whether `module` was imported from a C extension rather than its .py source."""
    path = getattr(importlib.import_module(module), "__file__", None) or ""
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def compiled_modules() -> dict[str, bool]:
    """Each hot module and whether it runs compiled (for logs and benchmarks)."""
    return {module: is_compiled(module) for module in HOT_MODULES}
