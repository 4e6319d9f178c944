"""The architecture study: RDN configurations side by side, quality and CPU speed.

    python -m benchmarks.architecture_study --configs 3,4,32,32 3,10,64,64 6,20,64,64 \\
        --minutes 40 --data ../shared/datasets/train \\
        --sets ../shared/datasets/benchmark/set5 ../shared/datasets/benchmark/set14 \\
               ../shared/datasets/benchmark/bsd100

For each configuration C,D,G,G0 it (1) measures the served CPU latency per input
megapixel with freshly initialised weights (speed does not depend on their values),
float32 through the served tiling code; and, with ``--minutes``, (2) trains it for that
many minutes with supersizeme.toolchain.train's defaults (so every configuration gets the same
budget on the same machine), exports it to ``runs/study/<name>/ckpt-model`` and measures
Y-PSNR on each set through the served path. With ``--checkpoints`` instead of
``--configs``, (2) measures checkpoints trained elsewhere (a GPU run of ``gpu/jobs.txt``,
say), each exported beside itself. Prints one Markdown table, machine named.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from supersizeme.machine import cpu_count, hardware
from supersizeme.modelspec import RDNParams


def macs_per_input_pixel(model: object, scale: int) -> float:
    """Multiply-accumulates of every convolution, per input pixel."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            # The last convolution runs after the pixel shuffle, on scale**2 more pixels.
            pixels = scale**2 if layer.name == "SR" else 1
            total += np.prod(layer.kernel.shape) * pixels
    return total


def latency(
    params: RDNParams, size: int, repeat: int, threads: int
) -> tuple[int, float, float]:
    """(parameters, MACs per input pixel, median seconds per input megapixel), served by
    OpenVINO in float32 as the service runs it."""
    from supersizeme.rdn import build_rdn, to_openvino
    from supersizeme.service.runtime import compile_openvino
    from supersizeme.service.tiling import TiledUpscaler

    model = build_rdn(params)
    network = compile_openvino(to_openvino(model), "float32", threads).run
    upscale = TiledUpscaler(network, params.scale, params.receptive_radius)
    image = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    upscale(image)  # trace and build the kernels for this shape
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        upscale(image)
        seconds.append(time.perf_counter() - started)
    megapixels = size**2 / 1e6
    count = model.count_params()
    return count, macs_per_input_pixel(model, params.scale), statistics.median(seconds) / megapixels


def train(params: RDNParams, args: argparse.Namespace) -> Path:
    """Train for the budget in a child process; return its checkpoint."""
    run = Path("runs/study") / params.name
    command = [
        sys.executable, "-m", "supersizeme.toolchain.train", "--data", args.data, "--out", str(run),
        "--C", str(params.C), "--D", str(params.D), "--G", str(params.G),
        "--G0", str(params.G0), "--minutes", str(args.minutes), "--steps", "1000000",
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return run / "ckpt.npz"


def measure(checkpoint: Path, sets: list[str]) -> dict[str, float]:
    """Export a checkpoint beside itself and return its PSNR per set (served path) and steps."""
    from supersizeme.toolchain.export import export

    folder = export(checkpoint, checkpoint.parent / f"{checkpoint.stem}-model", sets)
    return {
        set_name: rows[next(r for r in rows if r != "bicubic")]["psnr"]
        for set_name, rows in folder.spec["evaluation"].items()
    } | {"steps": folder.spec["training"]["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["3,4,32,32", "3,6,32,32", "3,10,64,64"])
    parser.add_argument("--minutes", type=float, default=0, help="training budget; 0: speed only")
    parser.add_argument(
        "--checkpoints", nargs="*", default=[],
        help="measure these trained checkpoints (from a GPU, say) instead of --configs",
    )  # fmt: skip
    parser.add_argument("--data", default="", help="folder of HR training images")
    parser.add_argument("--sets", nargs="*", default=[], help="benchmark folders")
    parser.add_argument("--size", type=int, default=512, help="side of the square speed input")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=cpu_count())
    args = parser.parse_args()
    if args.minutes and not (args.data and args.sets):
        parser.error("--minutes needs --data and --sets")
    if args.checkpoints and not args.sets:
        parser.error("--checkpoints needs --sets")

    from supersizeme.rdn import configure_threads

    configure_threads(args.threads)
    from supersizeme.toolchain.train import read_checkpoint

    rows = []
    for text in args.checkpoints or args.configs:
        if args.checkpoints:
            checkpoint = Path(text)
            params = RDNParams.from_json(read_checkpoint(checkpoint)[0]["params"])
        else:
            params = RDNParams(*(int(v) for v in text.split(",")))
            checkpoint = train(params, args) if args.minutes else None
        quality = measure(checkpoint, args.sets) if checkpoint else {}
        rows.append((params, *latency(params, args.size, args.repeat, args.threads), quality))
    set_names = [Path(s).name for s in args.sets] if rows[0][-1] else []
    print(
        f"\nMachine: {hardware()}; latency: OpenVINO on {args.threads} threads, float32, "
        f"{args.size}x{args.size} input, median of {args.repeat}"
        + (f"; training budget {args.minutes:g} min each" if args.minutes else "")
        + (f"; quality of {' '.join(args.checkpoints)}" if args.checkpoints else "")
        + "\n"
    )
    header = ["configuration", "parameters", "MACs / input px", "s / input MP"]
    header += ["steps"] + [f"{name} PSNR" for name in set_names] if set_names else []
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for params, count, macs, seconds, quality in rows:
        cells = [params.name, f"{count:,}", f"{macs / 1e3:,.0f} k", f"{seconds:.2f}"]
        if set_names:
            cells += [str(quality["steps"])] + [f"{quality[name]:.2f}" for name in set_names]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
