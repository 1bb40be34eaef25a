"""Keep XLA:CPU's per-call buffers on the heap, so a CPU train step stops faulting its memory in.

XLA:CPU allocates the temporaries of each call of a compiled function as one block with glibc's
malloc, from a worker thread: 84 MB for the experiment's default train step. glibc serves a
block that size with mmap (it is above its 32 MiB mmap ceiling and too big for a thread's
64 MiB arena) and unmaps it again at free, so every step touches fresh pages: 20.5k minor page
faults and ~70 ms of system time per step on a 2-core machine, a fifth of the step's CPU time
(BENCHMARKS.md, "Page faults of the CPU train step").

`keep_heap()` makes threads that have not allocated yet share the main heap (M_ARENA_MAX=1),
serves every block from it rather than by mmap (M_MMAP_MAX=0) and keeps up to 2 GiB of freed
memory mapped (M_TRIM_THRESHOLD): the next step reuses the pages the last one faulted in. The
price is that the process keeps its peak memory until it exits. It is process-wide, so lcnet
does not do it behind a library call: the experiment calls it first thing on a one-device mesh
(`host.keep_heap`), and a notebook or script of yours can, before jax computes anything. Not on a
mesh of several CPU devices: there the step did not fault per step, and one arena shared by every
device's threads made training 1.15x slower on a 2x2 mesh. glibc only; elsewhere it
returns False and changes nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int: the largest it accepts, ~2 GiB


@functools.cache
def keep_heap() -> bool:
  """Serve malloc from the main heap and keep freed pages mapped (see the module docstring).
  True when glibc took every setting; False (nothing changed) on another C library."""
  if platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
  return all(libc.mallopt(param, value) == 1 for param, value in settings)
