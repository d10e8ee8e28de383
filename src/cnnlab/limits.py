"""Limits that come before allocations: estimate what a setting will need, and refuse it with
the estimate and how to lower it when the machine cannot hold it (instead of a MemoryError or an
allocator's RuntimeError deep inside numpy or torch), or warn when it would take most of it.

``CNNLAB_MEMORY_LIMIT`` (bytes) caps the memory counted as available: for a machine shared with
others, and for tests.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .errors import UserError

# Above this share of the available memory a setting is allowed with a warning.
WARN_SHARE = 0.5


def fmt_bytes(n: float) -> str:
    """``n`` bytes as a short human figure: 512 B, 3.2 MB, 1.5 GB, 2.0 TB (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (Linux: MemAvailable), capped by
    ``CNNLAB_MEMORY_LIMIT``; None when neither says."""
    found: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            found = None
    cap = os.environ.get("CNNLAB_MEMORY_LIMIT", "").strip()
    if cap:
        if not (cap.isascii() and cap.isdigit()):
            raise UserError(f"CNNLAB_MEMORY_LIMIT = {cap!r}: give a number of bytes (for example 8000000000), or unset it.")
        found = min(found, int(cap)) if found is not None else int(cap)
    return found


def check_fits(need: int, what: str, lower: str, available: int | None = None, where: str = "this machine") -> None:
    """Refuse (UserError) when ``need`` bytes exceed ``available`` (default: the host's available
    memory), warn when they take more than WARN_SHARE of it. ``what`` names the thing measured
    ("the decoded images"), ``lower`` says how to need less."""
    avail = available_memory() if available is None else available
    if avail is None or need <= 0:
        return
    if need > avail:
        raise UserError(f"{what} would need about {fmt_bytes(need)} of memory, and {where} has {fmt_bytes(avail)} "
                        f"available; {lower}.")
    if need > WARN_SHARE * avail:
        warnings.warn(f"{what} will take about {fmt_bytes(need)} of the {fmt_bytes(avail)} of memory available "
                      f"on {where}; {lower} if the machine runs short.", stacklevel=2)
