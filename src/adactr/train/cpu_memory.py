"""Keep freed memory inside the process on the CPU (glibc ``mallopt``), so training steps stop page-faulting.

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
The cost is that the process's resident memory no longer shrinks after a peak, which for a training
process (whose next step needs the same memory again) is what we want.

The same effect from the shell: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<bytes>``.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_TRIM_BYTES = 2**31 - 1  # mallopt takes an int: trim only when 2 GB lie free at the heap's top

_applied = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse. Returns whether it took effect (False off glibc)."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: leave the allocator alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1
    return _applied
