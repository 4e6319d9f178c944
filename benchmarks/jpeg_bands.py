"""Which model gains most at each JPEG quality: the measurement behind routing.JPEG_BANDS.

    python -m benchmarks.jpeg_bands --sets ../shared/datasets/benchmark/set14 \\
        ../shared/datasets/benchmark/bsd100 --out benchmarks/jpeg-bands.md \\
        --json benchmarks/jpeg-bands.json

Every shipped model (clean, photo, photo-low) through the served path, as the evaluator
runs it (``supersizeme.toolchain.evaluate``): each benchmark image bicubic-downscaled, the
LR saved as a 4:2:0 JPEG of each quality and sent as the upload, bicubic enlarging the same
decoded JPEG. Prints a Markdown table with the machine named: per quality, the Y-PSNR gain
over bicubic of each model pooled over every image, the model that gains most, and the
model ``model=auto`` sends such a file to (``routing.auto_choice``), so that a band edge
that disagrees with the measurement shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from supersizeme.machine import hardware
from supersizeme.service.config import (
    DEFAULT_MODEL,
    DEFAULT_PHOTO_LOW_MODEL,
    DEFAULT_PHOTO_MODEL,
    REPO_ROOT,
)
from supersizeme.service.routing import CLEAN, PHOTO, PHOTO_LOW, auto_choice
from supersizeme.toolchain.evaluate import (
    BICUBIC,
    bicubic_png,
    evaluate_rows,
    image_files,
    jpeg_condition,
    load_served,
    pooled_gains,
)

HERE = Path(__file__).resolve().parent
QUALITIES = (98, 96, 94, 92, 90, 85, 80, 75, 70, 65, 60, 50, 40, 30)
SHIPPED = {CLEAN: DEFAULT_MODEL, PHOTO: DEFAULT_PHOTO_MODEL, PHOTO_LOW: DEFAULT_PHOTO_LOW_MODEL}


def measure(sets: list[str], qualities: list[int], precision: str) -> dict[int, dict]:
    """``{quality: {role: {"psnr", "bicubic", "gain"}}}``, pooled over every image."""
    models = {}
    for role, name in SHIPPED.items():
        models[role], scale = load_served(REPO_ROOT / "models" / name, precision)
    rows = {BICUBIC: bicubic_png(scale), **models}
    return {
        quality: pooled_gains(evaluate_rows(rows, sets, scale, condition=jpeg_condition(quality)))
        for quality in qualities
    }


def report(gains: dict[int, dict], sets: list[str], images: int, command: str) -> str:
    roles = list(SHIPPED)
    lines = [
        "# The best model at each JPEG quality",
        "",
        f"Machine: {hardware()}. `{command}`",
        "",
        f"{images} images ({', '.join(Path(s).name for s in sets)}); each LR saved as a "
        "4:2:0 JPEG of the quality and sent through the served path; Y-PSNR gain over "
        "bicubic of the same decoded JPEG, pooled over every image, in dB.",
        "",
        "| quality | bicubic dB | " + " | ".join(f"{r} gain" for r in roles) + " | best | auto |",
        "| ---: | ---: | " + " | ".join("---:" for _ in roles) + " | --- | --- |",
    ]
    for quality, by_role in gains.items():
        best = max(roles, key=lambda role: by_role[role]["gain"])
        cells = [f"{by_role[role]['gain']:+.2f}" for role in roles]
        bicubic = next(iter(by_role.values()))["bicubic"]
        lines.append(
            f"| {quality} | {bicubic:.2f} | " + " | ".join(cells)
            + f" | {best} | {auto_choice('JPEG', quality)} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", required=True, help="benchmark folders of HR images")
    parser.add_argument("--qualities", nargs="+", type=int, default=list(QUALITIES))
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--out", type=Path, default=HERE / "jpeg-bands.md")
    parser.add_argument("--json", type=Path, default=HERE / "jpeg-bands.json")
    args = parser.parse_args()
    gains = measure(args.sets, args.qualities, args.precision)
    images = sum(len(image_files(folder)) for folder in args.sets)
    command = "python -m benchmarks.jpeg_bands --sets " + " ".join(args.sets)
    text = report(gains, args.sets, images, command)
    args.out.write_text(text)
    args.json.write_text(
        json.dumps({"machine": hardware(), "sets": args.sets, "gains": gains}, indent=2) + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
