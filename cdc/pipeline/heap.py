"""Handing freed memory back to the operating system after a large batch.

Python's own allocator returns its arenas when they empty, but text longer than 512 bytes (the
content of most rows) lives in the C library's heap, and glibc keeps what was freed there for
reuse. After a snapshot or a large transaction that can leave a sidecar holding a hundred MB it
no longer uses, which a memory limit counts. `malloc_trim` returns it; elsewhere (musl, macOS)
this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

# Batches smaller than this leave too little behind to be worth a trim.
TRIM_AFTER_ROWS = 5000


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system; whether there was a way to."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
