"""The upscaler: a model folder and its settings made into one callable that upscales an
image under a deadline, timed at warm-up. The server (through ``ModelSlot``), the command
line, the evaluation and the benchmarks all get theirs from ``open_upscaler`` or ``load``.

Nothing here runs at import time; the app factory loads the model inside each worker,
after gunicorn forks. Loaded models are cached per process, keyed by what defines them, so a second
app in the same process (the test suite) reuses the first one's network instead of
building another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from supersizeme.machine import cpu_count, cpu_flags, reported_flags
from supersizeme.modelspec import ModelFolder
from supersizeme.service.capacity import (
    FLOOR_PIXELS,
    CapDecision,
    MemoryLedger,
    decide_cap,
    encode_seconds_per_megapixel,
    image_budget,
    resident_bytes,
)
from supersizeme.service.routing import CLEAN
from supersizeme.service.runtime import choose_precision, load_network, stream_count
from supersizeme.service.threads import mapped
from supersizeme.service.tiling import Stop, TiledUpscaler

log = logging.getLogger("supersizeme")

_cache: dict[tuple, Upscaler] = {}
_cache_lock = threading.Lock()

# The speed probe is what a large image is made of: full tiles with their context on every
# side, on every stream at once. Smaller probes miss the speed of the shape that is served
# (bfloat16 kernels in particular run small tiles at a lower share of their peak).
SPEED_PROBE_RUNS = 2
RETIMINGS = 1
RETIME_PAUSE_SECONDS = 1.0


@dataclass(frozen=True)
class LoadSettings:
    runtime: str = "openvino"
    precision: str = "auto"
    tile: int = 512
    threads: int = 1
    streams: int = 0  # tiles computed at once; 0: one per thread (runtime.stream_count)

    @property
    def tiles_at_once(self) -> int:
        return stream_count(self.runtime, self.threads, self.streams)


@dataclass(frozen=True)
class Upscaler:
    """A loaded network, tiled, with what it runs on and how fast it went at warm-up."""

    tiled: TiledUpscaler
    runtime: str
    precision: str
    precision_reason: str
    threads: int
    streams: int
    cpu_features: list[str]
    # Seconds of inference per input megapixel of a large image alone on the worker, tile
    # overlap included: full tiles timed on every stream at once (measure_speed).
    seconds_per_megapixel: float

    def __call__(
        self,
        image: np.ndarray,
        stop: Stop | None = None,
        lanes: int | None = None,
        dtype: type[np.generic] = np.float32,
    ) -> np.ndarray:
        """Upscale ``image`` on ``lanes`` streams at once (all of them unless given), into
        ``dtype`` (TiledUpscaler)."""
        return self.tiled(image, stop, self.streams if lanes is None else lanes, dtype)

    @property
    def scale(self) -> int:
        return self.tiled.scale


def full_tiles(upscaler: TiledUpscaler, streams: int) -> float:
    """Seconds to run one full tile, its context on every side included, on each of
    ``streams`` streams at once."""
    side = upscaler.tile + 2 * upscaler.overlap
    tile = np.random.default_rng(0).random((1, side, side, 3), np.float32)
    started = time.perf_counter()
    mapped(upscaler.network, [tile] * streams, streams, "warm-up")
    return time.perf_counter() - started


def warm_up(upscaler: TiledUpscaler, streams: int) -> None:
    """Run one full tile on every stream at once.

    A stream's first tile at a size larger than any before allocates and first touches its
    buffers, which makes it markedly slower than the next ones. Done here, the
    worker's first requests do not pay for it, the speed probes time the machine rather
    than the allocator, and the worker's resident memory at rest is what it needs at work.
    """
    full_tiles(upscaler, streams)


def measure_speed(upscaler: TiledUpscaler, streams: int = 1) -> float:
    """Seconds of inference per input megapixel of a large image, measured now: a full
    tile on every stream at once, per pixel that a tile keeps.

    That is the cost of an interior tile. A large image's tiles at its borders need
    context on fewer sides (a 12 MP photo's tiles compute 1.18 times what they keep, an
    interior tile 1.21 times); on 12 MP images the estimate was within 10 % of the
    inference measured, either way (benchmarks/latency.md, benchmarks/photo.md).
    """
    # The fastest of a few runs: the speed of the machine, not of whatever else was
    # starting on it at the same moment (other workers loading their models).
    fastest = min(full_tiles(upscaler, streams) for _ in range(SPEED_PROBE_RUNS))
    return fastest / (streams * upscaler.tile**2) * 1e6


def load(folder: ModelFolder, settings: LoadSettings) -> Upscaler:
    """Build the network in its runtime, warm it up and time it; cached per process.

    The key holds everything the load decided from, the CPU's flags included, so that an
    upscaler loaded under other flags (a test's fake /proc/cpuinfo) is never handed back.
    """
    flags = cpu_flags()
    key = (str(folder.path.resolve()), folder.spec.get("weights_sha256"), settings, flags)
    with _cache_lock:
        if key not in _cache:
            choice = choose_precision(settings.precision, flags, folder.spec)
            network = load_network(
                folder, settings.runtime, choice.precision, settings.threads, settings.streams
            )
            upscaler = TiledUpscaler(
                network.run,
                scale=folder.params.scale,
                overlap=folder.params.receptive_radius,
                tile=settings.tile,
            )
            warm_up(upscaler, network.streams)
            reason = choice.reason
            if network.precision != choice.precision:
                reason = (
                    f"{choice.precision} asked, but {network.runtime} runs {network.precision} here"
                )
            _cache[key] = Upscaler(
                tiled=upscaler,
                runtime=network.runtime,
                precision=network.precision,
                precision_reason=reason,
                threads=settings.threads,
                streams=network.streams,
                cpu_features=reported_flags(flags),
                seconds_per_megapixel=measure_speed(upscaler, network.streams),
            )
        return _cache[key]


def open_upscaler(model_dir: str | Path, settings: LoadSettings | None = None) -> Upscaler:
    """The upscaler of the model folder at ``model_dir``: the folder opened and verified, its
    network loaded in ``settings`` (by default every core), warmed up and timed."""
    return load(ModelFolder.open(model_dir), settings or LoadSettings(threads=cpu_count()))


def slowest(upscalers: dict[str, Upscaler]) -> float:
    """The highest seconds per input megapixel among ``upscalers``: what the cap must allow."""
    return max(served.seconds_per_megapixel for served in upscalers.values())


@dataclass(frozen=True)
class PixelCap:
    """What the worker's pixel cap is decided from: an operator's cap (or None: decided by
    the machine), the deadline, and the memory the worker's replica may use."""

    configured: int | None
    deadline_seconds: float
    memory_bytes: int
    workers: int = 1


class ModelSlot:
    """One worker's models: loading, then ready (or failed), as /readyz reports it.

    ``folders`` by role (``routing``): the clean model always, the photo models for
    compressed uploads where they are configured, all on the same threads and streams.
    Once they are loaded and timed, ``cap`` is the pixel cap in force and what decided it
    (capacity.decide_cap), from the slowest model's speed and the memory left beside all
    of them, and ``memory`` the ledger of its images' memory.
    """

    def __init__(
        self, folders: dict[str, ModelFolder], settings: LoadSettings, limits: PixelCap
    ):
        if CLEAN not in folders:
            raise ValueError(f"a worker serves a {CLEAN} model; given {sorted(folders)}")
        self.folders = dict(folders)
        self.settings = settings
        self.limits = limits
        self.cap: CapDecision | None = None
        self.memory = MemoryLedger(0)
        self.encode_seconds_per_megapixel: float | None = None
        # Every model's upscaler by role, once all of them are loaded.
        self.upscalers: dict[str, Upscaler] = {}
        self.error: str | None = None
        self.loaded_at: float | None = None
        self._ready = threading.Event()

    @property
    def folder(self) -> ModelFolder:
        """The clean model's folder: what the worker serves whatever else it holds."""
        return self.folders[CLEAN]

    @property
    def served(self) -> Upscaler | None:
        """The clean model's upscaler once every model is loaded, else None."""
        return self.upscalers.get(CLEAN)

    @property
    def max_pixels(self) -> int:
        """The input pixel cap at x2 in force (before loading: the operator's, or the floor)."""
        if self.cap is not None:
            return self.cap.max_pixels
        return self.limits.configured or FLOOR_PIXELS

    @property
    def precision(self) -> str:
        """The precision computed in: as measured once loaded, as chosen before."""
        if self.served is not None:
            return self.served.precision
        return choose_precision(self.settings.precision, cpu_flags(), self.folder.spec).precision

    @property
    def state(self) -> str:
        if self.served is not None:
            return "ready"
        return "failed" if self.error else "loading"

    def load(self) -> None:
        try:
            loaded = {role: load(folder, self.settings) for role, folder in self.folders.items()}
            encode = self.encode_seconds_per_megapixel = encode_seconds_per_megapixel()
            # Measured with every model in memory: the budget is what is left beside them.
            budget = image_budget(self.limits.memory_bytes, self.limits.workers, resident_bytes())
            cap = self._decide(slowest(loaded) + encode, budget)
            if cap.decided_by == "speed":
                loaded = {role: self._timed_again(served) for role, served in loaded.items()}
                cap = self._decide(slowest(loaded) + encode, budget)
            self._report(cap, loaded[CLEAN], slowest(loaded))
            self.memory = MemoryLedger(budget)
            self.cap = cap
            self.upscalers = loaded
            self.loaded_at = time.time()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._ready.set()

    def _decide(self, seconds_per_megapixel: float, budget: int) -> CapDecision:
        limits = self.limits
        return decide_cap(
            limits.configured, seconds_per_megapixel, limits.deadline_seconds, budget
        )

    @staticmethod
    def _timed_again(served: Upscaler) -> Upscaler:
        """The speed from a few more probes, a moment apart, when the speed sets the cap.

        Workers that start together time themselves while their siblings still load their
        models on the same cores; the cap is for the machine's speed, not for that.
        """
        timings = [served.seconds_per_megapixel]
        for _ in range(RETIMINGS):
            time.sleep(RETIME_PAUSE_SECONDS)
            timings.append(measure_speed(served.tiled, served.streams))
        return replace(served, seconds_per_megapixel=min(timings))

    def _report(self, cap: CapDecision, served: Upscaler, seconds_per_megapixel: float) -> None:
        speed = (
            f"{seconds_per_megapixel:.2f} s of inference and "
            f"{self.encode_seconds_per_megapixel:.2f} s of encoding per input megapixel "
            f"({served.runtime}, {served.precision}, {served.threads} threads)"
        )
        if cap.decided_by == "SSM_MAX_PIXELS":
            if cap.max_pixels > min(cap.speed_pixels, cap.memory_pixels):
                log.warning(
                    "SSM_MAX_PIXELS=%d is kept as set, above what this worker would choose "
                    "(%d by speed in half the %g s deadline at %s; %d by memory): larger "
                    "images may miss the deadline or be refused for memory",
                    cap.max_pixels,
                    cap.speed_pixels,
                    self.limits.deadline_seconds,
                    speed,
                    cap.memory_pixels,
                )
            return
        # A floor the memory cannot hold refuses even small images: say so loudly.
        report = log.warning if cap.memory_pixels < FLOOR_PIXELS else log.info
        report(
            "pixel cap %d, decided by %s: %d by speed (half the %g s deadline at %s), "
            "%d by memory",
            cap.max_pixels,
            cap.decided_by,
            cap.speed_pixels,
            self.limits.deadline_seconds,
            speed,
            cap.memory_pixels,
        )

    def upscaler_for(self, role: str) -> Upscaler:
        """The loaded upscaler of the model ``role`` (one of routing.MODEL_CHOICES but auto)."""
        return self.upscalers[role]

    def load_in_background(self, on_failure: Callable[[ModelSlot], None]) -> threading.Thread:
        def run() -> None:
            try:
                self.load()
            except Exception:
                on_failure(self)

        thread = threading.Thread(target=run, name="model-loader", daemon=True)
        thread.start()
        return thread

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)
