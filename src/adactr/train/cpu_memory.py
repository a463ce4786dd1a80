"""Keep freed memory inside the process on the CPU (glibc ``mallopt``) while training steps run.

A CPU training step allocates and frees the same large buffers every time (APG v1/v2: 100 MB-1 GB
generated matrices per step). glibc serves blocks above its mmap threshold (at most 32 MB) with fresh
``mmap`` pages and gives freed memory back to the kernel (``munmap``, heap trimming), so each such step
touches new pages and pays a page fault per 4 KB. With ``M_MMAP_MAX = 0`` (no mmap'd blocks) and a high
``M_TRIM_THRESHOLD`` the freed blocks stay in the heap and the next step reuses them.

Measured on the 2-core CPU, one APG training step of the Table 4 tower (WDL [64, 32, 16], batch 4096,
one thread, two runs each way; ``python benchmarks/apg_cost.py table5 --device cpu --batch 4096 --input
100 --rank 8 --cond-dim 10 --sizes 64,32,16 --reps 5 --threads 1 --skip v3 [--keep-freed-memory]``):
v1 344 / 393 -> 232 / 230 ms, v2 486 / 399 -> 319 / 255 ms. DeepFM's step showed no difference beyond
this machine's noise (``python benchmarks/cpu_step.py --threads 2 [--keep-freed-memory]``). Nothing
numerical changes: only where buffers come from.

The setting is scoped (:func:`freed_memory_kept`), not left on for the life of the process: a heap that
never returns memory fragments when differently sized buffers follow one another, and one process that
built the Table 5 towers one after another ([64,32,16] .. [1024,512,256], v1..v5) with the setting left
on grew to the machine's 24 GB and was killed, where without it the same run finished. So the trainer
keeps freed memory only while an epoch's training steps run (the same buffers, step after step); on leaving
the scope the glibc defaults come back and ``malloc_trim`` hands the kept memory to the kernel.

After a scope the heap may still hold free blocks (trimmed: their pages are given back); a later
allocation outside any scope that fits one is served from it instead of a fresh ``mmap``, and is kept
until the next scope ends. So the process's history decides where a buffer comes from, never what it holds.

The same effect from the shell, for a whole process: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<bytes>``.
When either of those variables is set, this module leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_TRIM_BYTES = 2**31 - 1  # mallopt takes an int: trim only when 2 GB lie free at the heap's top
_DEFAULT_MMAP_MAX = 65536  # glibc's defaults (malloc/malloc.c), restored on leaving the scope
_DEFAULT_TRIM_BYTES = 128 * 1024
_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")

_depth = 0


def _libc() -> Any | None:
    """glibc's handle, or None (another OS or libc, or the user set the allocator from the shell)."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _ENV):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # musl or another libc: leave the allocator alone
        return None
    return libc


@contextmanager
def freed_memory_kept(enabled: bool = True) -> Iterator[bool]:
    """Within the block, glibc keeps freed blocks for reuse; on leaving it, its defaults come back and the
    kept memory is trimmed. Yields whether the setting is in effect. Nested blocks share the outermost's."""
    global _depth
    libc = _libc() if enabled else None
    if libc is None:
        yield False
        return
    if _depth == 0:
        applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1
        if not applied:
            yield False
            return
    _depth += 1
    try:
        yield True
    finally:
        _depth -= 1
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_BYTES)
            libc.malloc_trim(0)
