"""The worker's RDN: loaded once per process, after gunicorn forks.

TensorFlow is not fork-safe, so nothing here runs at import time; ``load`` is called
from the app factory inside each worker. Loaded networks are cached per process, keyed
by what defines them, so a second app in the same process (the test suite) reuses the
first one's network instead of building another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from supersizeme.modelspec import ModelFolder
from supersizeme.tiling import TiledUpscaler

_cache: dict[tuple, TiledUpscaler] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class LoadSettings:
    precision: str = "float32"
    tile: int = 512
    intra_op_threads: int = 1


def load(folder: ModelFolder, settings: LoadSettings) -> TiledUpscaler:
    """Build the network, load its weights and warm it up; cached per process."""
    key = (str(folder.weights_path.resolve()), folder.spec.get("weights_sha256"), settings)
    with _cache_lock:
        if key not in _cache:
            from supersizeme.rdn import compile_network, configure_threads, load_rdn

            configure_threads(settings.intra_op_threads)
            network = compile_network(load_rdn(folder, settings.precision))
            upscaler = TiledUpscaler(
                network,
                scale=folder.params.scale,
                overlap=folder.params.receptive_radius,
                tile=settings.tile,
            )
            # The first call traces the graph and builds oneDNN kernels: pay for it here,
            # not in the first user's request.
            upscaler(np.zeros((32, 32, 3), np.float32))
            _cache[key] = upscaler
        return _cache[key]


class ModelSlot:
    """One worker's model: loading, then ready (or failed), as /readyz reports it."""

    def __init__(self, folder: ModelFolder, settings: LoadSettings):
        self.folder = folder
        self.settings = settings
        self.upscaler: TiledUpscaler | None = None
        self.error: str | None = None
        self.loaded_at: float | None = None
        self._ready = threading.Event()

    @property
    def state(self) -> str:
        if self.upscaler is not None:
            return "ready"
        return "failed" if self.error else "loading"

    def load(self) -> None:
        try:
            self.upscaler = load(self.folder, self.settings)
            self.loaded_at = time.time()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._ready.set()

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
