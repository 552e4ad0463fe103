"""Host (CPU-side) memory settings for training processes.

:func:`retain_freed_memory` makes glibc's malloc serve large blocks from its heap and keep freed
memory for reuse, so XLA:CPU's per-step scratch block does not re-fault fresh pages every step.
Every run path calls it; it is process-wide, a no-op off glibc, and off when
``RNNJAX_RETAIN_FREED_MEMORY=0``. Why and what it buys: docs/implementation.md, "Host memory".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Free memory at the top of the heap beyond this is still returned to the kernel.
TRIM_THRESHOLD = 1 << 30

_done = False

THREADS_ENV = "RNNJAX_NATIVE_THREADS"


def threads_from_env() -> int | None:
    """``RNNJAX_NATIVE_THREADS`` as a count of native-kernel workers (>= 1), or None when unset.
    A ValueError of one line, naming the variable and the fix, for anything else: the scripts check
    it before they create a workdir (rnnjax.network.impls.native reads it when a step is traced)."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if not env:
        return None
    if not env.isdigit() or int(env) < 1:
        raise ValueError(
            f"{THREADS_ENV}={env!r}: expected a whole number of threads >= 1 "
            "(or unset it to use every core this process may run on)"
        )
    return int(env)


def retain_freed_memory() -> bool:
    """Serve large allocations from malloc's heap and keep freed memory (up to 1 GiB) for reuse.

    Returns True when the setting is in effect (Linux with glibc, not switched off by
    ``RNNJAX_RETAIN_FREED_MEMORY=0``). Idempotent. Memory freed by the process is then
    reused by it rather than returned to the operating system, so its resident size
    stays near its peak.
    """
    global _done
    if _done:
        return True
    if os.environ.get("RNNJAX_RETAIN_FREED_MEMORY", "1") == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # One arena: a per-thread arena is a 64 MB mmapped heap that cannot hold a larger block, and
    # XLA allocates from its own threads. No mmap: large blocks come from the heap and stay there.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _done = all(mallopt(param, value) == 1 for param, value in settings)
    return _done
