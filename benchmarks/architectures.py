"""Served CPU latency of RDN configurations, for the architecture study.

    python benchmarks/architectures.py --configs 3,4,32,32 3,6,32,32 3,10,64,64 6,20,64,64

Speed does not depend on the values of the weights, so each configuration runs with
freshly initialised weights through the served tiling code (float32, tile 512). Prints
parameters, multiply-accumulates per input pixel (counted from the built network) and the
median seconds per input megapixel, with the machine named.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supersizeme.config import cpu_count, hardware
from supersizeme.modelspec import RDNParams


def macs_per_input_pixel(model: object, scale: int) -> float:
    """Multiply-accumulates of every convolution, per input pixel."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel.shape
            # Layers after the pixel shuffle run at scale**2 times the input's pixels.
            pixels = scale**2 if layer.name == "SR" else 1
            total += np.prod(kernel) * pixels
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", nargs="+", default=["3,4,32,32", "3,6,32,32", "3,10,64,64"])
    parser.add_argument("--size", type=int, default=512, help="side of the square input")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=cpu_count())
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args()

    from supersizeme.rdn import build_rdn, compile_network, configure_threads
    from supersizeme.tiling import TiledUpscaler

    configure_threads(args.threads)
    image = np.random.default_rng(0).random((args.size, args.size, 3), dtype=np.float32)
    rows = []
    for text in args.configs:
        C, D, G, G0 = (int(v) for v in text.split(","))
        params = RDNParams(C=C, D=D, G=G, G0=G0)
        model = build_rdn(params, args.precision)
        upscale = TiledUpscaler(compile_network(model), 2, params.receptive_radius, 512)
        upscale(image)  # trace and build kernels for this shape
        seconds = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            upscale(image)
            seconds.append(time.perf_counter() - started)
        megapixels = args.size**2 / 1e6
        rows.append(
            (
                params,
                model.count_params(),
                macs_per_input_pixel(model, 2),
                statistics.median(seconds) / megapixels,
            )
        )
    print(
        f"Machine: {hardware()}; {args.threads} TensorFlow threads; {args.precision}; "
        f"{args.size}x{args.size} input, median of {args.repeat}\n"
    )
    print("| configuration | parameters | MACs per input pixel | s per input MP |")
    print("| --- | ---: | ---: | ---: |")
    for params, count, macs, seconds in rows:
        print(f"| {params.name} | {count:,} | {macs / 1e3:,.0f} k | {seconds:.2f} |")


if __name__ == "__main__":
    main()
