"""Can the RDN x2 be served in int8? NNCF post-training quantisation variants, measured.

    /tmp/int8venv/bin/python -m benchmarks.int8_study \\
        --model models/rdn-C3-D6-G32-G032-x2 --out benchmarks/int8.md

Runs in a venv of its own with NNCF (``pip install nncf openvino==2026.4.1 pillow numpy``),
not the project's: NNCF is a study tool, not a dependency of the service.

Calibration data comes from the TRAINING images only (``--train``), made as in training:
an HR crop, bicubic-downscaled by 2 with ``supersizeme.toolchain.degradation``. One image
in ten of the training folder is held out of calibration; its crops are the validation set of the
accuracy-controlled variant, scored by Y-PSNR (dB), so its ``max_drop`` is in dB. The
benchmarks (Set5, Set14) are used for measurement only, through the project's protocol
(``supersizeme.toolchain.evaluate``: Pillow bicubic LR, the served PNG path, Y-PSNR with the border
shaved); each network is run on the whole image by OpenVINO on the CPU.

Speed is seconds per input megapixel on one 564x564 tile (512 plus the 26-pixel overlap on
each side), median of ``--repeat`` runs after one warm-up, on 1 and 2 threads, compiled as
the service compiles (LATENCY hint, one stream). All variants and float32 are timed
round-robin in the same loop, so that a change in the machine's load hits them alike.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.arguments import benchmark_parser
from supersizeme import machine
from supersizeme.service.levels import quantised
from supersizeme.toolchain import degradation, evaluate
from supersizeme.toolchain.quality import psnr, rgb_to_y, shave

ROOT = Path(__file__).resolve().parent.parent
SCALE = 2
TILE = 564  # 512 input pixels plus the 26-pixel overlap on each side
CALIBRATION_PATCH = 64  # LR side; the HR crop is twice that
VALIDATION_EVERY = 10  # every tenth training image is held out of calibration


# ---------------------------------------------------------------------------- machine


def machine_line() -> str:
    flags = machine.cpu_flags()
    int8_units = flags & {"avx512_vnni", "avx_vnni", "amx_int8"}
    note = "" if int8_units else " (no VNNI/AMX: int8 convolutions use AVX2 u8*s8 pairs)"
    return machine.hardware() + note


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


# ------------------------------------------------------------------------------- data


def training_split(folder: Path) -> tuple[list[Path], list[Path]]:
    """(calibration images, held-out validation images) of the training folder."""
    files = evaluate.image_files(folder)
    held = [f for i, f in enumerate(files) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
    return [f for f in files if f not in held], held


def crop_pair(
    image: Image.Image, rng: np.random.Generator, lr_side: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random HR crop (at most 2*lr_side, even) and its bicubic LR, as in training."""
    width, height = image.size
    side_w = min(lr_side * SCALE, width - width % SCALE)
    side_h = min(lr_side * SCALE, height - height % SCALE)
    x = int(rng.integers(0, width - side_w + 1))
    y = int(rng.integers(0, height - side_h + 1))
    return degradation.hr_lr_pair(image.crop((x, y, x + side_w, y + side_h)), SCALE)


def make_patches(
    files: list[Path], count: int, seed: int, lr_side: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (HR, LR) uint8 crop pairs, images drawn in turn from a shuffled list."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(files)))
    pairs = []
    images: dict[int, Image.Image] = {}
    for k in range(count):
        index = int(order[k % len(order)])
        if index not in images:
            with Image.open(files[index]) as opened:
                images[index] = opened.convert("RGB")
        pairs.append(crop_pair(images[index], rng, lr_side))
    return pairs


def network_input(lr: np.ndarray) -> np.ndarray:
    return (lr.astype(np.float32) / 255.0)[None]


def to_uint8(output: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(output[0], 0.0, 1.0) * 255.0).astype(np.uint8)


def crop_psnr(hr: np.ndarray, sr: np.ndarray) -> float:
    """Y-PSNR with the scale's border shaved, as the benchmark protocol scores."""
    y_hr = shave(rgb_to_y(hr), SCALE)
    y_sr = shave(rgb_to_y(sr), SCALE)
    return min(psnr(y_hr, y_sr), 100.0)


def validation_fn(compiled: Any, items: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple:
    """NNCF's validation function: (mean Y-PSNR in dB, Y-PSNR of each crop)."""
    values = []
    for hr, lr in items:
        out = compiled(network_input(lr))[0]
        values.append(crop_psnr(hr, to_uint8(out)))
    return float(np.mean(values)), values


# ----------------------------------------------------------------------------- layers


def convolutions(model: Any) -> list[Any]:
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]


def layer_labels(model: Any, blocks: int, per_block: int) -> dict[str, str]:
    """Friendly name -> RDN role of every convolution, in graph order (ISR's layout)."""
    labels = ["SFE1 (first conv)", "SFE2"]
    for d in range(1, blocks + 1):
        labels += [f"RDB{d} conv{c}" for c in range(1, per_block + 1)] + [f"RDB{d} LFF 1x1"]
    labels += [
        "GFF 1x1",
        "GFF 3x3",
        "UPN conv1 5x5",
        "UPN conv2",
        "UPN conv3 (shuffle)",
        "SR (last conv)",
    ]
    convs = convolutions(model)
    if len(convs) != len(labels):
        raise SystemExit(f"expected {len(labels)} convolutions, found {len(convs)}")
    return {op.get_friendly_name(): label for op, label in zip(convs, labels, strict=True)}


def _quantised_activation(output: Any) -> bool:
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind in ("Concat", "Transpose", "Reshape"):
        return all(
            _quantised_activation(i.get_source_output())
            for i in node.inputs()
            if i.get_source_output().get_node().get_type_name() != "Constant" or kind == "Concat"
        )
    return False


def _quantised_weight(output: Any) -> bool:
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return str(node.get_element_type()) in (
            "<Type: 'int8_t'>",
            "<Type: 'uint8_t'>",
            "i8",
            "u8",
            "<Type: 'int4_t'>",
        )
    if kind in ("Convert", "Subtract", "Multiply", "Reshape"):
        return _quantised_weight(node.input(0).get_source_output())
    return False


def float_layers(model: Any, labels: dict[str, str]) -> list[str]:
    """RDN roles of the convolutions that do not run in int8 (input or weights not
    quantised), in graph order."""
    stay = []
    for op in convolutions(model):
        if not (
            _quantised_activation(op.input(0).get_source_output())
            and _quantised_weight(op.input(1).get_source_output())
        ):
            stay.append(labels.get(op.get_friendly_name(), op.get_friendly_name()))
    return stay


# --------------------------------------------------------------------------- variants


@dataclass
class Variant:
    key: str
    title: str
    build: Callable[[], Any]
    model: Any = None
    quantise_seconds: float = 0.0
    floats: list[str] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    speed: dict[int, float] = field(default_factory=dict)
    note: str = ""
    reused: bool = False


def make_variants(
    fp32: Any,
    calibration: list[np.ndarray],
    validation: list[tuple[np.ndarray, np.ndarray]],
    labels: dict[str, str],
) -> dict[str, Variant]:
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    def dataset(n: int) -> Any:
        return nncf.Dataset(calibration[:n])

    by_role = {role: name for name, role in labels.items()}
    edges = [
        "SFE1 (first conv)",
        "SFE2",
        "UPN conv1 5x5",
        "UPN conv2",
        "UPN conv3 (shuffle)",
        "SR (last conv)",
    ]
    fusion = [role for role in by_role if role.endswith("1x1")]

    def scope(roles: list[str]) -> Any:
        return nncf.IgnoredScope(names=[by_role[r] for r in roles])

    mixed = nncf.QuantizationPreset.MIXED
    large = min(len(calibration), 600)

    def accurate(**extra: Any) -> dict[str, Any]:
        return {"preset": mixed, "fast_bias_correction": False, "subset_size": large, **extra}

    def quick(**extra: Any) -> dict[str, Any]:
        # b1 showed the slow BiasCorrection buys nothing here for ~8 minutes on 2 cores.
        return {"preset": mixed, "subset_size": large, **extra}

    def with_accuracy_control() -> Any:
        return nncf.quantize_with_accuracy_control(
            fp32,
            dataset(300),
            nncf.Dataset(validation),
            validation_fn,
            max_drop=0.1,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=mixed,
            subset_size=300,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                ranking_subset_size=len(validation), num_ranking_workers=1
            ),
        )

    variants = [
        Variant("a", "default, 300 patches", lambda: nncf.quantize(fp32, dataset(300))),
        Variant(
            "b1",
            f"MIXED, bias correction (not fast), {large} patches",
            lambda: nncf.quantize(fp32, dataset(large), **accurate()),
        ),
        Variant(
            "b2",
            "MIXED + overflow_fix=ENABLE (7-bit weights, AVX2-safe), fast BC",
            lambda: nncf.quantize(
                fp32,
                dataset(large),
                **accurate(
                    advanced_parameters=AdvancedQuantizationParameters(
                        overflow_fix=OverflowFix.ENABLE
                    )
                ),
            ),
        ),
        Variant(
            "b3",
            "MIXED + SmoothQuant on convolutions (alpha 0.5), fast BC",
            lambda: nncf.quantize(
                fp32,
                dataset(large),
                **quick(
                    model_type=nncf.ModelType.TRANSFORMER,
                    advanced_parameters=AdvancedQuantizationParameters(
                        smooth_quant_alphas=AdvancedSmoothQuantParameters(
                            convolution=0.5, matmul=-1
                        )
                    ),
                ),
            ),
        ),
        Variant(
            "c1",
            "MIXED, fast BC; first two, upsampling and last convs float",
            lambda: nncf.quantize(fp32, dataset(large), **quick(ignored_scope=scope(edges))),
        ),
        Variant(
            "c2",
            "c1 + 1x1 fusion convs (LFF, GFF) float",
            lambda: nncf.quantize(
                fp32, dataset(large), **quick(ignored_scope=scope(edges + fusion))
            ),
        ),
        Variant(
            "d",
            "accuracy control, max_drop 0.1 dB on held-out training crops (MIXED)",
            with_accuracy_control,
        ),
    ]
    return {v.key: v for v in variants}


# ------------------------------------------------------------------------ measurement


def compile_model(core: Any, model: Any, threads: int) -> Any:
    return core.compile_model(
        model,
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )


def quality(core: Any, model: Any, sets: list[Path], threads: int) -> dict[str, float]:
    """Mean Y-PSNR per benchmark folder, through the project's served PNG path."""
    compiled = compile_model(core, model, threads)
    request = compiled.create_infer_request()

    def upscale(rgb: np.ndarray, stop: Any, dtype: type[np.generic] = np.float32) -> np.ndarray:
        batch = np.ascontiguousarray(rgb[None], np.float32)
        result = request.infer({0: batch})[0][0]
        return result.copy() if dtype == np.float32 else quantised(result, dtype)

    served = evaluate.served_png(upscale, SCALE)
    return {
        evaluate.set_name(folder): evaluate.evaluate_folder(served, folder, SCALE)["psnr"]
        for folder in sets
    }


def speeds(core: Any, models: dict[str, Any], threads: int, repeat: int) -> dict[str, float]:
    """Seconds per input megapixel on a TILE x TILE tile, median of ``repeat``, round-robin."""
    rng = np.random.default_rng(0)
    tile = rng.random((1, TILE, TILE, 3), dtype=np.float32)
    requests = {
        key: compile_model(core, model, threads).create_infer_request()
        for key, model in models.items()
    }
    times: dict[str, list[float]] = {key: [] for key in models}
    for request in requests.values():
        request.infer({0: tile})  # warm-up
    for _ in range(repeat):
        for key, request in requests.items():
            started = time.perf_counter()
            request.infer({0: tile})
            times[key].append(time.perf_counter() - started)
    megapixels = TILE * TILE / 1e6
    return {key: statistics.median(t) / megapixels for key, t in times.items()}


# ----------------------------------------------------------------------------- report


def table(variants: list[Variant], base: Variant, sets: list[str]) -> str:
    titles = {"set5": "Set5", "set14": "Set14"}
    head = (
        "| variant | "
        + " | ".join(f"{titles.get(s, s)} dB | Δ {titles.get(s, s)}" for s in sets)
        + " | s/MP 1 thr | s/MP 2 thr | speed vs fp32 (1 / 2 thr) | meets |"
    )
    lines = [head, "|" + " --- |" * (4 + 2 * len(sets) + 1)]
    for v in [base, *variants]:
        cells = []
        for s in sets:
            delta = v.quality[s] - base.quality[s]
            cells += [f"{v.quality[s]:.2f}", "–" if v is base else f"{delta:+.2f}"]
        ratio = " / ".join(f"{base.speed[n] / v.speed[n]:.2f}x" for n in (1, 2))
        meets = "–" if v is base else ("**yes**" if meets_bar(v, base, sets) else "no")
        lines.append(
            f"| {v.key}: {v.title} | "
            + " | ".join(cells)
            + f" | {v.speed[1]:.2f} | {v.speed[2]:.2f} | {ratio} | {meets} |"
        )
    return "\n".join(lines) + "\n"


def meets_bar(v: Variant, base: Variant, sets: list[str]) -> bool:
    lossless = all(base.quality[s] - v.quality[s] <= 0.1 for s in sets)
    faster = all(v.speed[n] < base.speed[n] for n in (1, 2))
    return lossless and faster


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--train", default="../shared/datasets/train")
    parser.add_argument(
        "--sets",
        nargs="+",
        default=["../shared/datasets/benchmark/set5", "../shared/datasets/benchmark/set14"],
    )
    parser.add_argument("--variants", default="a,b1,c1,c2,d,b2,b3")
    parser.add_argument("--patches", type=int, default=600, help="calibration patches made")
    parser.add_argument("--validation", type=int, default=58, help="held-out training crops")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--deadline", type=float, default=0, help="minutes; start no variant after it (0: none)"
    )
    parser.add_argument("--quality-threads", type=int, default=2)
    parser.add_argument("--out", help="write the Markdown report here")
    parser.add_argument("--save-best", help="folder for the IR of the best variant that meets")
    parser.add_argument(
        "--reuse", default="", help="variants to read from --scratch (an earlier run's IR)"
    )
    parser.add_argument("--scratch", default="/tmp/int8-variants", help="every variant's IR")
    args = parser.parse_args(argv)

    import nncf
    import openvino as ov

    load_before = uptime()
    print(f"machine: {machine_line()}\nload before: {load_before}", file=sys.stderr)
    core = ov.Core()
    folder = args.model
    fp32 = core.read_model(folder / "openvino" / "model.xml")
    spec = json.loads((folder / "model.json").read_text())
    labels = layer_labels(fp32, spec["D"], spec["C"])

    calib_files, held_files = training_split(Path(args.train))
    started = time.perf_counter()
    calibration = [
        network_input(lr) for _, lr in make_patches(calib_files, args.patches, 1, CALIBRATION_PATCH)
    ]
    validation = make_patches(held_files, args.validation, 2, CALIBRATION_PATCH)
    print(
        f"data: {len(calibration)} calibration patches from {len(calib_files)} training images, "
        f"{len(validation)} validation crops from {len(held_files)} held-out ones "
        f"({time.perf_counter() - started:.1f} s)",
        file=sys.stderr,
    )
    sets = [Path(s) for s in args.sets]
    set_keys = [evaluate.set_name(s) for s in sets]

    base = Variant("fp32", "float32 (shipped IR)", lambda: fp32, model=fp32)
    base.quality = quality(core, fp32, sets, args.quality_threads)
    fp32_val = validation_fn(compile_model(core, fp32, args.quality_threads), validation)[0]
    print(f"fp32: {base.quality}; held-out training crops {fp32_val:.3f} dB", file=sys.stderr)

    catalogue = make_variants(fp32, calibration, validation, labels)
    chosen = [catalogue[k] for k in args.variants.split(",") if k]
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    done: list[Variant] = []
    run_started = time.perf_counter()
    for v in chosen:
        if args.deadline and time.perf_counter() - run_started > args.deadline * 60:
            v.note = f"not run: the {args.deadline:g}-minute deadline had passed"
            print(f"{v.key}: {v.note}", file=sys.stderr)
            continue
        started = time.perf_counter()
        reused = scratch / f"{v.key}.xml"
        if v.key in args.reuse.split(",") and reused.exists():
            v.model = core.read_model(reused)
            v.reused = True
        try:
            v.model = v.model or v.build()
        except Exception as error:  # a variant NNCF refuses is reported, not fatal
            v.note = f"failed: {type(error).__name__}: {error}"
            print(f"{v.key}: {v.note}", file=sys.stderr)
            continue
        v.quantise_seconds = time.perf_counter() - started
        v.floats = float_layers(v.model, labels)
        if not v.reused:
            ov.save_model(v.model, scratch / f"{v.key}.xml", compress_to_fp16=False)
        v.quality = quality(core, v.model, sets, args.quality_threads)
        val = validation_fn(compile_model(core, v.model, args.quality_threads), validation)[0]
        v.note = f"held-out training crops {val - fp32_val:+.3f} dB"
        print(
            f"{v.key}: {v.quality} ({v.note}); {v.quantise_seconds:.0f} s to quantise; "
            f"float: {v.floats}",
            file=sys.stderr,
        )
        done.append(v)

    models = {"fp32": fp32, **{v.key: v.model for v in done}}
    for threads in (1, 2):
        for key, value in speeds(core, models, threads, args.repeat).items():
            (base if key == "fp32" else next(v for v in done if v.key == key)).speed[threads] = (
                value
            )
    load_after = uptime()

    winners = [v for v in done if meets_bar(v, base, set_keys)]
    best = max(winners, key=lambda v: base.speed[2] / v.speed[2], default=None)
    if best and args.save_best:
        target = Path(args.save_best)
        target.mkdir(parents=True, exist_ok=True)
        ov.save_model(best.model, target / "model.xml", compress_to_fp16=False)

    command = "/tmp/int8venv/bin/python " + shlex.join(
        ["-m", "benchmarks.int8_study", *(argv if argv is not None else sys.argv[1:])]
    )
    report = [
        "# int8 (NNCF post-training quantisation) of the RDN x2, measured\n",
        f"Machine: {machine_line()}. OpenVINO {ov.__version__}, NNCF {nncf.__version__}.\n",
        f"Command (from the repository root):\n\n    {command}\n",
        f"Load before: `{load_before}`  \nLoad after: `{load_after}`  \n"
        "The machine (2 cores) was shared with other work during the run whenever the load "
        "average above exceeds ~0: the speed ratios are indicative (all rows were timed "
        "round-robin in one loop, so load hits them alike), the PSNRs are exact.\n",
        f"Calibration: {len(calibration)} LR patches of {CALIBRATION_PATCH}x{CALIBRATION_PATCH} "
        f"from {len(calib_files)} training images (HR crop of {2 * CALIBRATION_PATCH} px, "
        f"Pillow bicubic /2); variants use the first 300 or all of them as stated. "
        f"Validation for (d): {len(validation)} crops of {len(held_files)} held-out training "
        f"images (every {VALIDATION_EVERY}th), Y-PSNR; float32 scores {fp32_val:.2f} dB there. "
        "Quality: mean Y-PSNR over the images of each set, the project's protocol "
        "(`supersizeme.toolchain.evaluate`), whole image per inference. Speed: s per input MP on a "
        f"{TILE}x{TILE} tile, median of {args.repeat}, LATENCY hint, 1 stream. "
        "'meets': loses at most 0.1 dB on every set AND is faster at 1 and 2 threads.\n",
        table(done, base, set_keys),
        "\n## Layers that stay float (not int8) in each variant\n",
    ]
    for v in chosen:
        if v in done:
            floats = ", ".join(v.floats) if v.floats else "none (all 32 convolutions int8)"
            took = (
                "IR reused from an earlier run"
                if v.reused
                else (f"{v.quantise_seconds:.0f} s to quantise")
            )
            report.append(f"- **{v.key}** ({took}; {v.note}): {floats}")
        else:
            report.append(f"- **{v.key}**: {v.note}")
    report.append("")
    report.append("## Conclusion\n")
    report.append(conclusion(done, base, set_keys, best, args.save_best))
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def conclusion(
    done: list[Variant], base: Variant, sets: list[str], best: Variant | None, saved: str | None
) -> str:
    def worst(v: Variant) -> float:
        return max(base.quality[s] - v.quality[s] for s in sets)

    if not done:
        return "No variant was produced."
    closest = min(done, key=worst)
    fastest = max(done, key=lambda v: base.speed[2] / v.speed[2])
    summary = (
        f"The closest variant to float32 is {closest.key} ({closest.title}), losing "
        f"{worst(closest):.2f} dB at worst, at {base.speed[1] / closest.speed[1]:.2f}x / "
        f"{base.speed[2] / closest.speed[2]:.2f}x float32's speed (1 / 2 threads); the "
        f"fastest is {fastest.key} at {base.speed[2] / fastest.speed[2]:.2f}x on 2 threads, "
        f"losing {worst(fastest):.2f} dB. "
    )
    if best:
        return summary + (
            f"Variant {best.key} meets the bar (≤ 0.1 dB on {', '.join(sets)} and faster): "
            f"int8 can ship as an option. Its IR was written to {saved or '(not saved)'}."
        )
    return summary + (
        "No variant meets the bar (≤ 0.1 dB loss on every set AND faster than float32 at "
        "1 and 2 threads): int8 should not ship on this evidence."
    )


if __name__ == "__main__":
    main()
