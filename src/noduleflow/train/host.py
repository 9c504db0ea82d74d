"""Process-wide CPU settings for training: intra-op threads and glibc's handling of large frees.

Why the allocator: a training step on CPU allocates and frees the same large activation and
gradient buffers every step, larger than glibc's mmap threshold (at most 32 MB). glibc serves such
blocks with fresh mmap()s, and the kernel zero-fills every new page on first touch: a sizeable share
of each step went to page faults (docs/decisions.md, 2026-11-29). Raising the mmap and trim
thresholds keeps freed blocks in the heap for reuse, at the price of not returning the peak to the OS
until the process exits - the right trade for a training process, not for a long-lived server.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers from glibc's malloc.h


def configure_host(device: torch.device, threads: int = 0) -> None:
    """Set torch's intra-op threads (0 keeps PyTorch's default) and, for CPU training, keep freed memory."""
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        keep_freed_memory()


def keep_freed_memory() -> bool:
    """Make glibc reuse freed large blocks instead of unmapping them; False where there is no glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False
