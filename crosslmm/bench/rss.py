"""Peak resident memory of one call, measured in a fresh process (Linux only).

The process is ``spawn``ed with ``MALLOC_MMAP_THRESHOLD_=65536``: every tensor of 64 KiB or more is its own
mmap, returned to the OS when freed, so resident memory follows live tensors. Before the call the kernel's
peak-RSS mark is reset (``/proc/self/clear_refs``); the call's peak is the mark afterwards minus the
resident memory before it, so whatever was alive before (weights, optimizer state, inputs) is excluded.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import re
from collections.abc import Callable
from typing import Any

_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new interpreter started with the malloc setting above (a fresh interpreter reads it
    at start); ``fn`` and its arguments must pickle."""
    context = multiprocessing.get_context("spawn")
    saved = os.environ.get(_THRESHOLD)
    os.environ[_THRESHOLD] = "65536"
    try:
        with context.Pool(1) as pool:
            return pool.apply(fn, args)
    finally:
        if saved is None:
            del os.environ[_THRESHOLD]
        else:
            os.environ[_THRESHOLD] = saved


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def peak_rss(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """(peak MB above the resident memory before the call, that resident memory in MB, ``fn``'s result).
    Freed memory is handed back to the OS first, so it does not hide in the resident set."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    out = fn(*args, **kwargs)
    return (_status_kb("VmHWM") - before) / 1024, before / 1024, out
