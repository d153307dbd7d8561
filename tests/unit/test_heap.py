"""Freed heap memory goes back to the system after a large batch."""

from __future__ import annotations

from pathlib import Path

from cdc.pipeline.heap import release_free_memory


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def test_freed_text_is_handed_back_to_the_system() -> None:
    # 200,000 strings of 600 characters live in the C heap (over Python's 512-byte limit).
    texts = [f"{i:08d}" + "x" * 592 for i in range(200_000)]
    holding = rss_kib()
    # Keep every 50th: the heap cannot shrink from its top, only give back what lies between.
    kept = texts[::50]
    del texts
    assert release_free_memory()
    released = holding - rss_kib()
    assert released > 60 * 1024, f"only {released} KiB handed back"
    assert len(kept) == 4000
