"""Turn a training checkpoint into a served model folder, measured and documented.

    python -m supersizeme.toolchain.export --checkpoint runs/rdn-C3-D6-G32-G032-x2/ckpt.npz \\
        --out models/rdn-C3-D6-G32-G032-x2 --data-name "T91 + BSD200 (291 images)" \\
        --sets ../shared/datasets/benchmark/set5 ../shared/datasets/benchmark/set14 \\
               ../shared/datasets/benchmark/bsd100

The folder gets float32 weights, a ``model.json`` with the training record, and then the
benchmark numbers measured *from the written folder* through the served path (so the card
describes the file that ships, not the training process's copy of it). Adding the numbers
rewrites ``model.json`` only; the weights and their sha256 stay as written. Last comes
``MODEL_CARD.md``, rendered from ``model.json`` alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supersizeme.machine import cpu_count, cpu_flags, hardware, native_bfloat16
from supersizeme.modelspec import ModelFolder, RDNParams, write_spec
from supersizeme.toolchain.degradation import DEGRADATIONS, JpegDegradation
from supersizeme.toolchain.evaluate import (
    BICUBIC,
    PNG,
    bicubic_png,
    evaluate_rows,
    finite_or_none,
    gain_table,
    jpeg_condition,
    load_served,
    markdown_table,
    row_name,
    served_png,
    set_name,
)
from supersizeme.toolchain.train import TrainConfig, read_checkpoint

CARD_FILE = "MODEL_CARD.md"
# A model trained in phases (--resume, --init-from) is exported from its last checkpoint.
LAST_PHASE = "The list describes the last phase of training; the paragraph after it, every phase."
DEFAULT_DATA_NAME = "T91 + BSD200 (291 images)"
PROTOCOL = (
    "HR cropped to a multiple of the scale; LR = Pillow bicubic downscale; LR sent as PNG "
    "through pipeline.supersize; PSNR / SSIM on BT.601 Y (16-235) with `scale` pixels "
    "shaved, averaged over images; latency = served seconds (decode + inference + encode) "
    "per input megapixel"
)

# Provenance and terms of the data sets the project trains on, keyed by a word that the
# data name contains; a data set not listed here gets a prompt to check its terms.
_DATA_TERMS = {
    "T91": '**T91** (91 images): Yang, Wright, Huang and Ma, "Image super-resolution via '
    'sparse representation", IEEE Transactions on Image Processing, 2010; distributed with '
    "public super-resolution research code, for research use.",
    "BSD": "**BSD200** (200 images): the training and validation splits of the Berkeley "
    "Segmentation Dataset BSDS300, Martin, Fowlkes, Tal and Malik, ICCV 2001. Berkeley "
    "licenses BSDS for non-commercial research and educational use.",
}

# How a model card names each training loss (train.LOSS_COLOUR_ROWS).
LOSS_NAMES = {
    "l1": "L1",
    "l1-luma": "L1 on BT.601 YCbCr, each chroma difference weighted 1/4",
}
_UPSCALING = {"shuffle": "sub-pixel convolution", "ups": "nearest-neighbour upsampling"}

# Fields of TrainConfig that do not change what training computes.
_BOOKKEEPING = {"resume", "threads", "checkpoint_every"}
# Fields always written out, default or not, so the command reads on its own.
_ALWAYS = {"data", "out", "C", "D", "G", "G0", "steps"}


def train_command(config: dict[str, Any], module: str = "supersizeme.toolchain.train") -> str:
    """The command line of ``module`` (either trainer) that reproduces ``config``."""
    defaults = TrainConfig()
    args = ["python", "-m", module]
    for field in dataclasses.fields(TrainConfig):
        if field.name in _BOOKKEEPING or field.name not in config:
            continue
        value = config[field.name]
        if field.name in _ALWAYS or value != getattr(defaults, field.name):
            args += [f"--{field.name.replace('_', '-')}", str(value)]
    return shlex.join(args)


def trainer_module(state: dict[str, Any]) -> str:
    """The module that wrote a checkpoint: only the PyTorch trainer names itself."""
    return (
        "supersizeme.toolchain.train_torch" if "trainer" in state else "supersizeme.toolchain.train"
    )


def training_record(
    state: dict[str, Any], checkpoint: str, data_name: str, machine: str, note: str = ""
) -> dict[str, Any]:
    config = state["config"]
    return {
        "data": data_name,
        "data_path": config["data"],
        "steps": state["step"],
        "planned_steps": config["steps"],
        "time_budget_minutes": config["minutes"] or None,
        "batch": config["batch"],
        "patch_lr": config["patch"],
        "patch_hr": config["patch"] * config["scale"],
        "loss": LOSS_NAMES[config.get("loss", "l1")],
        "optimizer": "Adam",
        "lr": config["lr"],
        "min_lr": config["min_lr"],
        "warmup_steps": config["warmup"],
        "schedule": "linear warm-up, then cosine decay to min_lr",
        "degradation": config.get("degradation", "bicubic"),
        "precision": config["precision"],
        "seed": config["seed"],
        "wall_minutes": round(state["seconds"] / 60, 1),
        "hardware": machine,
        "checkpoint": checkpoint,
        "trainer": state.get("trainer", "tensorflow"),
        "command": train_command(config, trainer_module(state)),
        "history": note or None,
    }


def write_folder(checkpoint: str | Path, out: str | Path, spec: dict[str, Any]) -> ModelFolder:
    """Rebuild the checkpoint's network in float32 and save it as a model folder."""
    from supersizeme.rdn import build_rdn, save_model_folder, set_named_weights

    state, weights, _ = read_checkpoint(Path(checkpoint))
    params = RDNParams.from_json(state["params"])
    # Served in float32 whatever the training precision: the variables were float32 all
    # along, only the arithmetic was bfloat16.
    model = build_rdn(params, "float32")
    set_named_weights(model, weights)
    return save_model_folder(
        model, params, out, {"parameter_count": int(model.count_params()), **spec}
    )


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What the card says of a model trained on one degradation (train.py --degradation)."""

    inputs: str  # ends the sentence on how the LR inputs were made
    use: str
    limitation: str


_KINDS = {
    "bicubic": _Kind(
        ".",
        "clean natural images (photographs, renders without heavy compression)",
        "It learned one degradation: bicubic downscaling of clean images. It does not "
        "remove\n  JPEG blocking, sensor noise, motion or focus blur; on such input it tends "
        "to sharpen\n  the artefacts along with the edges.",
    ),
}


def _jpeg_kind(degradation: JpegDegradation) -> _Kind:
    low, high = degradation.qualities
    return _Kind(
        ", saved as a baseline JPEG\n"
        f"of a quality drawn from {low} to {high}, in "
        + " or ".join(f"{name} ({weight:g})" for name, weight in degradation.subsamplings)
        + " chroma (supersizeme.toolchain.degradation.JpegDegradation).",
        "JPEG-compressed photographs (camera files, pictures from the web and messengers)",
        f"It learned bicubic downscaling followed by JPEG compression at qualities {low}-{high}."
        "\n  It smooths the blocks and ringing away, and with them some fine texture: on clean"
        "\n  (PNG) input the clean model is sharper (the PNG row below). It does not remove "
        "sensor\n  noise, motion or focus blur.",
    )


_KINDS.update(
    {
        name: _jpeg_kind(degradation)
        for name, degradation in DEGRADATIONS.items()
        if isinstance(degradation, JpegDegradation)
    }
)


def jpeg_section(spec: dict[str, Any]) -> str:
    """The card's gain table on JPEG inputs, where the export measured them."""
    jpeg = spec.get("evaluation_jpeg")
    if not jpeg:
        return ""
    conditions = {PNG: spec["evaluation"]} if spec.get("evaluation") else {}
    conditions.update({jpeg_condition(int(q)): results for q, results in jpeg.items()})
    return (
        "\nOn compressed inputs: each LR saved as a 4:2:0 JPEG of that quality and sent as the"
        "\nupload; bicubic enlarges the same decoded JPEG. Y-PSNR pooled over all images:\n\n"
        + gain_table(conditions)
    )


def render_card(spec: dict[str, Any], commands: dict[str, str]) -> str:
    """MODEL_CARD.md from a model.json and the commands that reproduce it."""
    params = RDNParams.from_json(spec)
    training = spec.get("training") or {}
    setup = spec.get("evaluation_setup") or {}
    data = training.get("data", "unknown data")
    terms = [text for key, text in _DATA_TERMS.items() if key.lower() in data.lower()]
    if not terms:
        terms = [f"{data}: check the terms of these images before using the weights."]
    budget = training.get("time_budget_minutes")
    budget_note = (
        f"Training ran with a {budget:g}-minute budget: the step count it reaches, and with "
        "it the learning-rate schedule, depend on the speed of the machine."
        if budget
        else ""
    )
    count = spec.get("parameter_count")
    upscaling = _UPSCALING.get(params.upscaling, params.upscaling)
    t = training.get
    evaluation = spec.get("evaluation")
    table = markdown_table(evaluation) if evaluation else "_Not evaluated._\n"
    kind = _KINDS[t("degradation") or "bicubic"]
    return f"""# {spec.get("name", params.name)}

A residual dense network that enlarges photographs by {params.scale}x, packaged as a model
folder for the Super Size Me service (which loads this folder and nothing else).

## What it is

The network is the Residual Dense Network (RDN) of Zhang, Tian, Kong, Zhong and Fu,
"Residual Dense Network for Image Super-Resolution", CVPR 2018 (arXiv:1802.08797), built
with the Keras implementation in idealo's Image Super-Resolution package (ISR). Shallow
convolutions extract features, D residual dense blocks refine them (inside a block every
convolution sees the outputs of all earlier ones), a 1x1 and a 3x3 convolution fuse the
outputs of all blocks, and an upscaling block followed by one convolution produces the
larger image.

- Architecture: C = {params.C} convolutions per block, D = {params.D} blocks, G = {params.G}
  growth rate, G0 = {params.G0} feature maps; x{params.scale} by {upscaling};
  {f"{count:,}" if count else "n/a"} parameters
- Receptive radius: {params.receptive_radius} input pixels (tiles overlap this much)
- Weights: `weights.weights.h5`, float32, sha256 `{spec.get("weights_sha256")}`

## Training

{LAST_PHASE if t("history") else ""}

- Data: {data}, from `{t("data_path")}`
- Steps: {t("steps")} of {t("planned_steps")} planned, batch {t("batch")}, LR patches of
  {t("patch_lr")} px (HR {t("patch_hr")} px), each in one of the 8 flips and rotations
- Loss and optimiser: {t("loss")} with {t("optimizer")}; learning rate {t("lr")}, linear
  warm-up over {t("warmup_steps")} steps, then cosine decay to {t("min_lr")}
- Arithmetic: {t("precision")} (variables kept in float32); seed {t("seed")}
- Time: {t("wall_minutes")} minutes of training steps on {t("hardware")}

{t("history") or ""}

Low-resolution inputs were made from the high-resolution crops exactly as in the
evaluation below: crop to a multiple of {params.scale}, then Pillow's bicubic downscale{kind.inputs}

## Training data and licence

{_bullets(terms)}

The weights are derived from these images and carry the same terms: use them for
non-commercial research and education. The benchmark images (Set5, Set14, BSD100) were
used for measurement only, never for training.

## Intended use

Enlarging {kind.use} by exactly {params.scale}x, through the service or through
`supersizeme.service.pipeline`, in research, teaching and demonstrations. The output is
the model's estimate of a sharper image, fit for viewing, not a measurement of detail the
camera never recorded.

## Limitations

- {kind.limitation}
- Scale {params.scale} only. Applying it twice for 4x compounds its errors and was never
  measured.
- The training set is small and mostly natural scenes, animals and buildings. Text, line
  art, screenshots, faces and medical or satellite images are rare in it, so the gain over
  bicubic there is smaller and not measured.
- It is trained for PSNR (L1 loss): fine textures come out smooth rather than invented.
  Do not use the output as evidence (forensics, medicine, identification).
- It is far smaller and trained far shorter than the paper's RDN (C6, D20, G64 on DIV2K),
  so its numbers are below the paper's 38.24 / 34.01 / 32.34 dB on Set5 / Set14 / BSD100.
- Transparency is resized by bicubic interpolation, not by the network.

## Evaluation

{table}{jpeg_section(spec)}
Protocol: {setup.get("protocol", PROTOCOL)}.
Served by {setup.get("runtime", "tensorflow")} in {setup.get("precision", "?")}, tile
{setup.get("tile", "?")} px, {setup.get("threads", "?")} threads,
on {setup.get("hardware", "?")}. The bicubic row goes
through the same PNG-in, PNG-out measurement. Latencies depend on the machine and on what
else it was running at the time.

## Reproduce

```sh
{commands["train"]}
{commands["export"]}
{commands["evaluate"]}
```

{budget_note}
"""


def export(
    checkpoint: str | Path,
    out: str | Path,
    sets: Sequence[str | Path],
    data_name: str = DEFAULT_DATA_NAME,
    tile: int = 512,
    threads: int | None = None,
    machine: str | None = None,
    note: str = "",
    jpeg_qualities: Sequence[int] = (),
) -> ModelFolder:
    """Write, measure and document a model folder; returns the finished folder.

    ``machine`` describes where training ran (default: this machine); the evaluation
    always records this machine, since that is where it ran. ``jpeg_qualities`` adds the
    evaluation on inputs saved as JPEGs of those qualities (``evaluation_jpeg``).
    """
    from supersizeme.rdn import configure_threads

    threads = threads or cpu_count()
    # TensorFlow fixes its thread pools at the first op, and building the network is one.
    configure_threads(threads)
    state, _, _ = read_checkpoint(Path(checkpoint))
    training = training_record(state, str(checkpoint), data_name, machine or hardware(), note)
    folder = write_folder(checkpoint, out, {"training": training, "evaluation": None})

    served, scale = load_served(folder.path, "float32", tile, threads)
    rows = {BICUBIC: bicubic_png(scale), row_name(folder.path, "float32"): served}
    compressed = {
        str(quality): evaluate_rows(rows, sets, scale, condition=jpeg_condition(quality))
        for quality in jpeg_qualities
    }
    spec = {
        **folder.spec,
        "evaluation": finite_or_none(evaluate_rows(rows, sets, scale)),
        **({"evaluation_jpeg": finite_or_none(compressed)} if compressed else {}),
        "evaluation_setup": {
            "protocol": PROTOCOL,
            "runtime": "openvino",
            "precision": "float32",
            "tile": tile,
            "threads": threads,
            "hardware": hardware(),
        },
    }
    write_spec(folder.path, spec)
    check_bfloat16(ModelFolder.open(folder.path), sets, tile, threads)
    spec = ModelFolder.open(folder.path).spec
    set_args = ["--sets", *map(str, sets)]
    jpeg_args = ["--jpeg", *map(str, jpeg_qualities)] if jpeg_qualities else []
    export_args = ["--checkpoint", str(checkpoint), "--out", str(out), "--data-name", data_name]
    commands = {
        "train": training["command"],
        "export": shlex.join(
            ["python", "-m", "supersizeme.toolchain.export", *export_args, *set_args, *jpeg_args]
        ),
        "evaluate": shlex.join(
            [
                "python",
                "-m",
                "supersizeme.toolchain.evaluate",
                "--model",
                str(out),
                "--bicubic",
                *set_args,
                *jpeg_args,
            ]
        ),
    }
    (folder.path / CARD_FILE).write_text(render_card(spec, commands))
    # Reopening checks that the weights still match the sha256 in the rewritten model.json.
    return ModelFolder.open(folder.path)


def bfloat16_check_runtime(flags: frozenset[str]) -> str:
    """Where the CPU computes bfloat16 natively the check runs the served OpenVINO network;
    elsewhere OpenVINO would quietly compute in float32, so it runs Keras' mixed_bfloat16
    policy (bfloat16 inputs and weights, float32 accumulation, emulated: slow, but the
    same rounding)."""
    return "openvino" if native_bfloat16(flags) else "tensorflow"


def check_bfloat16(
    folder: ModelFolder, sets: Sequence[str | Path], tile: int = 512, threads: int | None = None
) -> dict[str, Any] | None:
    """Measure what bfloat16 costs on Set5 and Set14 and record it in ``model.json``.

    ``SSM_PRECISION=auto`` serves bfloat16 only where this record says the loss is small
    (runtime.choose_precision). The runtime is ``bfloat16_check_runtime``'s, and the record
    names it and the CPU it ran on. Returns the record, or None when ``sets`` lacks Set5
    or Set14.
    """
    from supersizeme.service.runtime import BFLOAT16_CHECKED_SETS
    from supersizeme.service.upscaler import LoadSettings, open_upscaler

    by_name = {Path(path).name.lower(): path for path in sets}
    if not all(name in by_name for name in BFLOAT16_CHECKED_SETS):
        return None
    checked = [by_name[name] for name in BFLOAT16_CHECKED_SETS]
    runtime = bfloat16_check_runtime(cpu_flags())
    psnr: dict[str, dict[str, float]] = {}
    for precision in ("float32", "bfloat16"):
        upscaler = open_upscaler(
            folder.path, LoadSettings(runtime, precision, tile, threads or cpu_count())
        )
        if upscaler.precision != precision:
            raise RuntimeError(
                f"{runtime} computes {upscaler.precision} on this CPU, not {precision}: "
                "the check would compare float32 with itself"
            )
        served = served_png(upscaler, upscaler.scale)
        results = evaluate_rows({precision: served}, checked, upscaler.scale)
        for name, path in zip(BFLOAT16_CHECKED_SETS, checked, strict=True):
            psnr.setdefault(name, {})[precision] = results[set_name(path)][precision]["psnr"]
    record = {
        "runtime": runtime if runtime == "openvino" else "tensorflow (Keras mixed_bfloat16)",
        "hardware": hardware(),
        "psnr": psnr,
        "loss_db": {
            name: round(values["float32"] - values["bfloat16"], 4) for name, values in psnr.items()
        },
    }
    write_spec(folder.path, {**folder.spec, "bfloat16_check": record})
    return record


def derive(path: str | Path, sets: Sequence[str | Path] = ()) -> ModelFolder:
    """Derive an existing folder's OpenVINO network (and, given Set5 and Set14, check
    bfloat16) without retraining or re-evaluating it."""
    from supersizeme.rdn import derive_openvino

    folder = derive_openvino(ModelFolder.open(path))
    if sets:
        check_bfloat16(folder, sets)
    return ModelFolder.open(path)


def main(argv: Sequence[str] | None = None) -> ModelFolder:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="a ckpt.npz written by training")
    parser.add_argument("--out", help="the model folder to write")
    parser.add_argument(
        "--derive",
        metavar="FOLDER",
        help="only derive FOLDER's OpenVINO network (and its bfloat16 check, with --sets)",
    )
    parser.add_argument("--sets", nargs="+", default=[], help="benchmark folders")
    parser.add_argument("--data-name", default=DEFAULT_DATA_NAME, help="training data, named")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads; 0: all")
    parser.add_argument("--hardware", help="describe the training machine (default: this one)")
    parser.add_argument("--note", default="", help="how the run went, when one command is not all")
    parser.add_argument(
        "--jpeg",
        nargs="+",
        type=int,
        default=[],
        metavar="Q",
        help="also evaluate inputs saved as 4:2:0 JPEGs of these qualities",
    )
    args = parser.parse_args(argv)
    if args.derive:
        folder = derive(args.derive, args.sets)
        print(f"derived {folder.openvino_model()}: {json.dumps(folder.spec.get('bfloat16_check'))}")
        return folder
    if not (args.checkpoint and args.out and args.sets):
        parser.error("an export needs --checkpoint, --out and --sets")
    folder = export(
        args.checkpoint,
        args.out,
        args.sets,
        data_name=args.data_name,
        tile=args.tile,
        threads=args.threads or None,
        machine=args.hardware,
        note=args.note,
        jpeg_qualities=args.jpeg,
    )
    print(markdown_table(folder.spec["evaluation"]), end="")
    print(f"wrote {folder.path} ({folder.spec['weights_sha256'][:12]}) and its {CARD_FILE}")
    return folder


if __name__ == "__main__":
    main()
