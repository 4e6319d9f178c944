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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from supersizeme.machine import cpu_count, cpu_flags, reported_flags
from supersizeme.modelspec import ModelFolder
from supersizeme.service.runtime import choose_precision, load_network, stream_count
from supersizeme.service.tiling import Stop, TiledUpscaler

log = logging.getLogger("supersizeme")

_cache: dict[tuple, Upscaler] = {}
_cache_lock = threading.Lock()

# The speed probe is what a large image is made of: full tiles with their context on every
# side, on every stream at once. Smaller probes miss the speed of the shape that is served
# (bfloat16 kernels in particular run small tiles at a lower share of their peak).
SPEED_PROBE_RUNS = 2
RETIMINGS = 2
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
        self, image: np.ndarray, stop: Stop | None = None, lanes: int | None = None
    ) -> np.ndarray:
        """Upscale ``image`` on ``lanes`` streams at once (all of them unless given)."""
        return self.tiled(image, stop, self.streams if lanes is None else lanes)

    @property
    def scale(self) -> int:
        return self.tiled.scale


def full_tiles(upscaler: TiledUpscaler, streams: int) -> float:
    """Seconds to run one full tile, its context on every side included, on each of
    ``streams`` streams at once."""
    side = upscaler.tile + 2 * upscaler.overlap
    tile = np.random.default_rng(0).random((1, side, side, 3), np.float32)
    with ThreadPoolExecutor(streams) as pool:
        started = time.perf_counter()
        list(pool.map(upscaler.network, [tile] * streams))
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
    context on fewer sides, so it runs a few percent faster than this (a 12 MP photo's
    tiles compute 1.18 times what they keep, an interior tile 1.21 times).
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


def speed_cap(max_pixels: int, seconds_per_megapixel: float, deadline_seconds: float) -> int:
    """The largest input, in pixels, whose inference fits in half the deadline (at most
    ``max_pixels``), rounded down to ten thousand pixels.

    Half, so that an image at the cap can wait behind another request in the same worker,
    and be decoded and encoded, and still finish in time.
    """
    servable = deadline_seconds / 2 / seconds_per_megapixel * 1e6
    return min(max_pixels, max(10_000, int(servable) // 10_000 * 10_000))


@dataclass(frozen=True)
class PixelCap:
    """The configured input pixel cap at x2, and whether an operator set it."""

    max_pixels: int
    deadline_seconds: float
    explicit: bool = False


class ModelSlot:
    """One worker's model: loading, then ready (or failed), as /readyz reports it.

    ``max_pixels`` is the cap in force: the configured one, lowered once the model is
    timed if this machine could not serve it within half the deadline (unless an
    operator set it).
    """

    def __init__(self, folder: ModelFolder, settings: LoadSettings, cap: PixelCap):
        self.folder = folder
        self.settings = settings
        self.cap = cap
        self.max_pixels = cap.max_pixels
        self.served: Upscaler | None = None
        self.error: str | None = None
        self.loaded_at: float | None = None
        self._ready = threading.Event()

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
            served = load(self.folder, self.settings)
            if self._fitting(served) < self.cap.max_pixels:
                served = self._timed_again(served)
            self.max_pixels = self._cap_in_force(served)
            self.served = served
            self.loaded_at = time.time()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._ready.set()

    @staticmethod
    def _timed_again(served: Upscaler) -> Upscaler:
        """The speed from a few more probes, a moment apart, before the cap is lowered.

        Workers that start together time themselves while their siblings still load their
        models on the same cores; a cap is lowered for the machine's speed, not for that.
        """
        timings = [served.seconds_per_megapixel]
        for _ in range(RETIMINGS):
            time.sleep(RETIME_PAUSE_SECONDS)
            timings.append(measure_speed(served.tiled, served.streams))
        return replace(served, seconds_per_megapixel=min(timings))

    def _fitting(self, served: Upscaler) -> int:
        cap = self.cap
        return speed_cap(cap.max_pixels, served.seconds_per_megapixel, cap.deadline_seconds)

    def _cap_in_force(self, served: Upscaler) -> int:
        cap = self.cap
        fitting = self._fitting(served)
        if fitting >= cap.max_pixels:
            return cap.max_pixels
        if cap.explicit:
            log.warning(
                "SSM_MAX_PIXELS=%d is kept as set, but at the measured %.1f s per megapixel "
                "an image at the cap needs more than half the %g s deadline",
                cap.max_pixels,
                served.seconds_per_megapixel,
                cap.deadline_seconds,
            )
            return cap.max_pixels
        log.warning(
            "pixel cap lowered from %d to %d: this machine measured %.1f s per megapixel "
            "(%s, %s, %d threads), and an image at the cap must fit in half the %g s deadline",
            cap.max_pixels,
            fitting,
            served.seconds_per_megapixel,
            served.runtime,
            served.precision,
            served.threads,
            cap.deadline_seconds,
        )
        return fitting

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
