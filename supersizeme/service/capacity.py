"""How large an image this worker serves, and how much memory its images may take.

The pixel cap follows the machine both ways. Left to itself (no ``SSM_MAX_PIXELS``), a
worker serves the largest image that

- its measured speed, inference and encode, finishes within half the deadline (so that an
  image at the cap can also wait behind another and still be in time), and
- its memory budget holds beside the worker's own resting memory,

between a floor that keeps every worker useful and a ceiling of what a 5 MB upload is
expected to carry. Whichever bound is lowest decides, and ``/supersizeme/model`` names it.
An operator's cap is kept as set; the memory ledger still refuses what would not fit.

Memory per request is modelled from the output's pixels: the decoded input, the result
and its encoded file all grow with them. A 12 MP photo took 8 to 12 bytes an output pixel
above the worker's memory before it (benchmarks/memory.md, "one 12 MP photo", in two runs);
the model reserves 16.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from supersizeme.service.images import encode

# A cap never goes below this, however slow the machine: a worker that could not serve a
# 100 x 100 image in time should not be serving.
FLOOR_PIXELS = 10_000
# What a 5 MB upload carries in practice: a 24 MP camera frame (6000 x 4000) is a 4-8 MB
# JPEG at the qualities cameras and phones write, a 12 MP one 2-5 MB. Above this, bodies
# within the 5 MB limit are images compressed far beyond what photographs are.
CEILING_PIXELS = 24_000_000
# Reserved per output pixel of a colour result: its decoded input, the result in 8 bits,
# the encoded PNG and its copies, above the 8 to 12 bytes a 12 MP photo took (x4 results,
# whose input is a sixteenth of their output, take less).
BYTES_PER_OUTPUT_PIXEL = 16
# Grey results stay float until encoded (their channels are averaged, and may be 16-bit):
# the float result (12 bytes), its channel mean (4), three equal channels again for WebP
# (12), the samples and the file.
GREY_BYTES_PER_OUTPUT_PIXEL = 32
# Kept out of the budget: what the allocator holds on to after large requests (a worker
# rested at 687 MiB after warm-up and at 1,632 MiB after a pass of benchmarks/memory.md's
# scenarios), the PNG writer's per-thread buffers, and the rest of the replica (gunicorn's
# master and the front, about 100 MiB).
HEADROOM_BYTES = 1024 * 2**20
ENCODE_PROBE_SIDE = 2048  # 12 MiB of rows: a stripe for each of three threads


@dataclass(frozen=True)
class CapDecision:
    """The input pixel cap at x2 in force, and what decided it."""

    max_pixels: int
    decided_by: str  # "SSM_MAX_PIXELS", "speed", "memory", "upload size" or "floor"
    speed_pixels: int  # what the speed alone would allow
    memory_pixels: int  # what the memory alone would allow


def decide_cap(
    configured: int | None,
    seconds_per_megapixel: float,
    deadline_seconds: float,
    image_bytes: int,
) -> CapDecision:
    """The cap for ``configured`` (an operator's SSM_MAX_PIXELS, or None), a worker that
    takes ``seconds_per_megapixel`` per input megapixel at x2 (inference and encode) and
    has ``image_bytes`` of memory for its images; rounded down to ten thousand pixels."""
    speed = int(deadline_seconds / 2 / seconds_per_megapixel * 1e6)
    memory = image_bytes // (4 * BYTES_PER_OUTPUT_PIXEL)
    if configured is not None:
        return CapDecision(configured, "SSM_MAX_PIXELS", speed, memory)
    bounds = {"speed": speed, "memory": memory, "upload size": CEILING_PIXELS}
    decided_by = min(bounds, key=bounds.__getitem__)
    cap = bounds[decided_by] // 10_000 * 10_000
    if cap < FLOOR_PIXELS:
        return CapDecision(FLOOR_PIXELS, "floor", speed, memory)
    return CapDecision(cap, decided_by, speed, memory)


def memory_limit_bytes() -> int:
    """The memory this process may use: its cgroup's limit (a container's ``--memory``,
    a pod's limit) where there is one, else the machine's."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        # cgroup v1 writes "no limit" as a number near 2**63.
        if value.isdigit() and int(value) < 2**60:
            return int(value)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> int:
    """This process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def image_budget(limit_bytes: int, workers: int, resting_bytes: int) -> int:
    """What one worker's images may take: its share of the limit, less what it holds at rest
    and the headroom."""
    return max(0, limit_bytes // max(1, workers) - resting_bytes - HEADROOM_BYTES)


def output_bytes(pixels: int, scale: int, grey: bool = False) -> int:
    """The memory modelled for a request of ``pixels`` input pixels at ``scale``."""
    per_pixel = GREY_BYTES_PER_OUTPUT_PIXEL if grey else BYTES_PER_OUTPUT_PIXEL
    return pixels * scale * scale * per_pixel


def encode_seconds_per_megapixel() -> float:
    """Seconds to encode a x2 result as PNG per input megapixel, measured now on every
    core, from 8-bit samples as the served path has them: a photo-like image of smooth
    shapes, edges and a sensor's noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:ENCODE_PROBE_SIDE, 0:ENCODE_PROBE_SIDE].astype(np.float32)
    base = 128 + 64 * np.sin(x / 23.0) * np.cos(y / 17.0)
    levels = np.stack([base, base.T, base[::-1]], axis=2) + rng.normal(0, 3, (*base.shape, 3))
    rgb = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    fastest = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        encode(rgb, None, grayscale=False, sixteen_bit=False)
        fastest = min(fastest, time.perf_counter() - started)
    # Four output pixels per input pixel at x2.
    return fastest / (ENCODE_PROBE_SIDE**2 / 1e6) * 4


class MemoryFull(Exception):
    """The worker's images in flight leave no room for this one."""

    def __init__(self, needed: int, free: int, budget: int):
        super().__init__(needed, free, budget)
        self.needed, self.free, self.budget = needed, free, budget


class MemoryLedger:
    """The memory the worker's images in flight may take, reserved per request from its
    header until its answer is sent, so that concurrent large images are refused rather
    than run the worker out of memory."""

    def __init__(self, budget: int):
        self.budget = budget
        self.reserved = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        with self._lock:
            free = self.budget - self.reserved
            if nbytes > free:
                raise MemoryFull(nbytes, free, self.budget)
            self.reserved += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.reserved -= nbytes


class MemoryClaim:
    """One request's share of a ledger: taken by ``admit`` once the input's size is known,
    given back by ``release`` (once, however often it is called)."""

    def __init__(self, ledger: MemoryLedger, scale: int):
        self._ledger, self._scale = ledger, scale
        self._held = 0
        self._lock = threading.Lock()

    def admit(self, pixels: int, grey: bool = False) -> None:
        nbytes = output_bytes(pixels, self._scale, grey)
        self._ledger.reserve(nbytes)
        with self._lock:
            self._held += nbytes

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, 0
        if held:
            self._ledger.release(held)
