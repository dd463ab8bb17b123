"""Keep the memory PyTorch frees inside the process, so the next large tensor does not page-fault it back in.

glibc hands large freed blocks back to the kernel: blocks above its mmap threshold are unmapped on `free`, and the
heap's free top is trimmed past its trim threshold. Each large tensor allocated afterwards then takes one page fault
per 4 KiB, zeroed by the kernel, on first touch. On 2 cores that was most of a thin op's time: the autoencoder's
refine head (a 19 MB activation per call) took 10 000 faults per decode, and keeping the memory made a stage-0 step
1.31x faster and `generate` 1.11x (docs/results.md, "Freed memory kept in the process"). `keep_freed_memory`
raises both thresholds once per process with glibc's `mallopt` (importing `layert2v` calls it); the cost is a
resident size that stays at its peak. Elsewhere than glibc it does nothing; `LAYERT2V_MALLOC=system` keeps glibc's
defaults (the benchmark compares both).
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> parameter numbers
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound on 64-bit: larger blocks are always mapped and unmapped
TRIM_THRESHOLD = 1 << 30  # free heap top kept up to this


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; False where the C library is not glibc or `LAYERT2V_MALLOC=system`."""
    if os.environ.get("LAYERT2V_MALLOC") == "system":
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
