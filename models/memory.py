"""Keep freed memory for reuse instead of handing it back to the kernel after every step.

A training step allocates and frees tensors of the same large sizes every step: the sampled
softmax's (positions x negatives) logits and their gradients run to 130 MB each on KuaiRand-1K,
a full-ranking evaluation chunk to tens of MB. glibc serves every block above its mmap threshold
(32 MB at most under its dynamic rule) with a fresh ``mmap`` and unmaps it on ``free``, so each
step faults in and zeroes every page of those tensors again. Measured on the 2-core CPU machine
(BENCHMARKS.md, "Training steps without page faults"): 900 million minor faults in a 34-minute
KuaiRand run, 43% of its CPU time spent in the kernel.

PyTorch's CPU performance guide recommends an allocator that reuses memory (jemalloc or
tcmalloc, preloaded); `reuse_freed_memory` gets the same from glibc itself with two ``mallopt``
calls: blocks up to `THRESHOLD_BYTES` come from the heap, and up to that much freed heap is kept
rather than trimmed. The price is that the process keeps its peak heap (plus up to
`THRESHOLD_BYTES` free) until it exits, which is why only the offline jobs (`uniserve train`,
`evaluate`, `build-index`) call it and the serving process does not (it measured no page-fault
cost). Settings the user gave glibc (``MALLOC_*`` variables, ``GLIBC_TUNABLES``) are left alone,
as is every C library other than glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

THRESHOLD_BYTES = 1 << 30  # 1 GiB: far above any one tensor of a training step
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> parameter numbers


def user_tuned_malloc() -> bool:
    """Whether the environment already tunes glibc's allocator (then it is left as given)."""
    return any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )


def reuse_freed_memory() -> bool:
    """Make glibc serve blocks up to `THRESHOLD_BYTES` from its heap and keep up to that much
    freed heap for reuse; returns whether both settings took. Process-wide and idempotent."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_tuned_malloc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        taken = bool(libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):
        return False
    log.debug("glibc keeps freed blocks up to %d bytes for reuse: %s", THRESHOLD_BYTES, taken)
    return taken
