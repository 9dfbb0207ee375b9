"""glibc malloc settings for a process that serves requests (``gateway serve``, workers).

Why: a gateway moves large bodies through short-lived buffers (uvloop reads up
to 256 KiB at a time, llhttp copies a packet's body out, bodies are joined).
With glibc's defaults, freed space at the top of the heap above about twice
the (adaptive) mmap threshold goes back to the kernel at once, and the next
response faults every page in again: ``make bench`` measured a third of a
1 MB pass-through response's CPU in page faults (845 us a request; 520-590 us
with the settings below; masked 1 MB 5% less; small responses unchanged).

So a serving process keeps up to :data:`TRIM_THRESHOLD` of freed heap, and
allocations up to :data:`MMAP_THRESHOLD` come from the heap. Larger ones (a
big masked body) are still mapped on their own and returned when freed, and
the memory bounds of ``make bench`` (25 MB masked, 1 GB streamed) hold. The
cost: after a burst, up to 32 MiB more may stay resident per process.

Only on Linux with glibc, and not when the operator set ``glibc.malloc``
tunables in ``GLIBC_TUNABLES`` (theirs win).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Final

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3

MMAP_THRESHOLD: Final = 4 * 1024 * 1024
TRIM_THRESHOLD: Final = 32 * 1024 * 1024


def tune_malloc() -> bool:
    """Apply the settings above; True when they were applied."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has it
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success; setting the mmap threshold also stops glibc moving it.
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
