"""Keep freed memory in the process instead of returning it to the kernel (glibc only).

A lockstep training step allocates and frees tens of megabytes (the stacked gradients of
every row, autograd's intermediates, the optimizer's stacks). glibc serves allocations above
its mmap threshold with fresh `mmap` pages and unmaps them on free, so every step faults in
and zeroes those pages again: a 9-run rehearsal job took 2.3 million page faults and a sixth
of its time in the kernel. With mmap off and trimming deferred, freed blocks stay in the heap
and the next step reuses them: jobs run faster, at a somewhat higher peak resident memory
(the run_breakdown benchmark's records measure both). PyTorch's CPU
performance guide recommends jemalloc or tcmalloc for the same reason; those need
`LD_PRELOAD` and a system package, this needs nothing. The numbers do not change: only where
the memory comes from does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # bytes free at the heap's top before it is returned (mallopt's int max)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    # musl and other C libraries have no mallopt, or one that ignores these parameters.
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it; True when glibc took both.

    Process-wide and for the rest of the process: call it once at the start of a training
    process (the `train` command does), not in a library or a long-lived interpreter.
    """
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
