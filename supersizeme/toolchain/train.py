"""Train an RDN for x2 super-resolution on any folder of high-resolution images.

    python -m supersizeme.toolchain.train --data ../shared/datasets/train --out runs/small \\
        --C 3 --D 10 --G 64 --G0 64 --steps 8000 --minutes 120

One loop, in the spirit of nanoGPT's train.py: the defaults sit in ``TrainConfig``;
each step draws random aligned LR/HR crops (one of the 8 flips/rotations each), takes
an Adam step on the L1 loss (in RGB, or luma-weighted: ``--loss``), and follows a warm-up
then cosine learning-rate decay.
Every ``checkpoint_every`` steps (and on the last step or Ctrl-C) the whole state goes
to ``<out>/ckpt.npz``: architecture, config, weights, optimizer moments, step, data RNG
state and the seconds trained, so that ``--resume`` continues exactly where it stopped.

The learning-rate schedule runs on progress = max(step / steps, seconds / budget):
with a time budget (``--minutes``) the rate still decays to its floor when the time,
not the step count, runs out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from supersizeme.modelspec import RDNParams
from supersizeme.toolchain.degradation import (
    DEGRADATIONS,
    VALIDATION_QUALITIES,
    Degrade,
    hr_lr_pair,
    jpeg_round_trip,
)

if TYPE_CHECKING:  # TensorFlow loads only when training starts, not on --help
    import keras
    import tensorflow as tf


@dataclass
class TrainConfig:
    # network (ISR's psnr-small layout by default)
    C: int = 3
    D: int = 10
    G: int = 64
    G0: int = 64
    scale: int = 2
    # data
    data: str = ""
    val: str = ""  # optional folder of HR images for a PSNR read-out; never trained on
    patch: int = 48  # LR patch side; the HR patch is patch * scale
    # what the LR input is: "bicubic" (the benchmarks' downscale) or "jpeg" (that downscale
    # saved as a JPEG of random quality and subsampling: the photo model's input)
    degradation: str = "bicubic"
    batch: int = 16
    # optimisation
    loss: str = "l1"  # a key of LOSS_COLOUR_ROWS: the colour space the L1 loss is taken in
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup: int = 200
    steps: int = 8000
    minutes: float = 0.0  # 0: no time budget
    precision: str = "bfloat16"  # mixed_bfloat16 halves a step's time on AVX-512 BF16 CPUs
    threads: int = 0  # 0: every core this process may use
    seed: int = 1234
    # "fan-in": kernels and biases from U(+-1/sqrt(fan_in)); "isr": ISR's U(+-0.05) for all
    init: str = "fan-in"
    # a checkpoint (of either trainer) whose weights start this run; its optimizer, step
    # and schedule are not taken: unlike --resume, batch, patch and the rest may change
    init_from: str = ""
    # bookkeeping
    out: str = "runs/rdn"
    checkpoint_every: int = 250
    eval_every: int = 1000
    resume: bool = False

    @property
    def params(self) -> RDNParams:
        return RDNParams(C=self.C, D=self.D, G=self.G, G0=self.G0, scale=self.scale)


def load_image_pairs(
    folder: str | Path, scale: int, min_side: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode every image of a folder once into (HR, LR) uint8 arrays."""
    pairs = []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith("."):
            continue
        try:
            with Image.open(path) as image:
                hr, lr = hr_lr_pair(image, scale)
        except OSError:
            print(f"skipping {path.name}: not an image Pillow can read", file=sys.stderr)
            continue
        if min(lr.shape[:2]) >= min_side:
            pairs.append((hr, lr))
    if not pairs:
        raise SystemExit(f"no usable images (LR side >= {min_side}) in {folder}")
    return pairs


def augment(patch: np.ndarray, transform: int) -> np.ndarray:
    """One of the 8 symmetries of the square: ``transform % 4`` quarter turns, then a flip."""
    patch = np.rot90(patch, transform % 4)
    return patch[:, ::-1] if transform >= 4 else patch


# The L1 loss is the mean absolute value of the RGB difference (SR - HR, in [0, 1]) mapped by
# these rows. "l1" is the paper's and ISR's plain RGB loss. "l1-luma" takes it on BT.601
# YCbCr with each chroma difference weighted a quarter: PSNR is judged on the luma (Y, as
# quality.rgb_to_y computes it), the eye resolves chroma at a fraction of luma's
# resolution, and a JPEG's 4:2:0 chroma leaves little to restore, so a network of this
# size spends its capacity on the luma.
_BT601_YCBCR = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]
)
LOSS_COLOUR_ROWS: dict[str, np.ndarray] = {
    "l1": np.eye(3, dtype=np.float32),
    "l1-luma": (np.diag([1.0, 0.25, 0.25]) @ _BT601_YCBCR / 255.0).astype(np.float32),
}


# A degraded crop is this much larger than the patch and cut at a random offset after the
# degradation, so that the JPEG's 8 x 8 blocks (16 x 16 with 4:2:0 chroma) fall anywhere
# in the patch, as they fall anywhere in a photo, rather than always on its corners.
DEGRADE_MARGIN = 16


def sample_batch(
    rng: np.random.Generator,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    weights: np.ndarray,
    batch: int,
    patch: int,
    scale: int,
    degrade: Degrade | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random aligned crops, images drawn in proportion to their area; floats in [0, 1].

    ``degrade`` (uint8 RGB, rng) -> uint8 RGB, when given, is applied to each LR crop after
    its flip or rotation, as a camera compresses the picture it took.
    """
    margin = DEGRADE_MARGIN if degrade else 0
    side = patch + margin
    lr_batch = np.empty((batch, patch, patch, 3), np.float32)
    hr_batch = np.empty((batch, patch * scale, patch * scale, 3), np.float32)
    for i, index in enumerate(rng.choice(len(pairs), size=batch, p=weights)):
        hr, lr = pairs[index]
        y = rng.integers(0, lr.shape[0] - side + 1)
        x = rng.integers(0, lr.shape[1] - side + 1)
        transform = int(rng.integers(0, 8))
        lr_crop = augment(lr[y : y + side, x : x + side], transform)
        hy, hx, hs = y * scale, x * scale, side * scale
        hr_crop = augment(hr[hy : hy + hs, hx : hx + hs], transform)
        oy = ox = 0
        if degrade:
            lr_crop = degrade(lr_crop, rng)
            oy, ox = (int(v) for v in rng.integers(0, margin + 1, size=2))
        lr_batch[i] = lr_crop[oy : oy + patch, ox : ox + patch]
        hp = patch * scale
        hr_batch[i] = hr_crop[oy * scale : oy * scale + hp, ox * scale : ox * scale + hp]
    return lr_batch / 255.0, hr_batch / 255.0


def scale_init_to_fan_in(model: keras.Model) -> None:
    """Re-draw every convolution's kernel and bias from U(+-1/sqrt(fan_in)).

    ISR initialises all layers from U(+-0.05) whatever their fan-in, which shrinks the
    first layer's output (fan-in 27) and makes the early steps crawl; scaling by fan-in
    (PyTorch's default for convolutions) keeps activations in range.
    """
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            bound = 1.0 / math.sqrt(np.prod(kernel.shape[:3]))
            layer.set_weights(
                [
                    keras.random.uniform(kernel.shape, -bound, bound).numpy(),
                    keras.random.uniform(bias.shape, -bound, bound).numpy(),
                ]
            )


def learning_rate(config: TrainConfig, step: int, seconds: float) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_lr`` over the run's progress."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    if config.minutes > 0:
        progress = max(progress, seconds / (config.minutes * 60))
    progress = min(1.0, progress)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


# Weights are stored by layer name in Keras' layout ("w/F_m1/kernel"), so that a checkpoint
# written by either trainer (TensorFlow here, PyTorch on a GPU machine) loads into either.
WEIGHT_PREFIX = "w/"


def write_checkpoint(path: Path, state: dict, arrays: dict[str, np.ndarray]) -> None:
    """``state`` as JSON plus named arrays, written atomically (a kill never leaves half)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(state)), **arrays)
    os.replace(tmp, path)


def save_checkpoint(
    path: Path, model: keras.Model, optimizer: keras.Optimizer, state: dict
) -> None:
    from supersizeme.rdn import named_weights

    arrays = {WEIGHT_PREFIX + name: w for name, w in named_weights(model).items()}
    arrays.update({f"opt_{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    write_checkpoint(path, state, arrays)


def read_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray], list[np.ndarray]]:
    """(state, weights by layer name, TensorFlow optimizer variables) of either trainer's
    checkpoint."""
    with np.load(path, allow_pickle=False) as data:
        state = json.loads(str(data["meta"]))
        # Checkpoints from before the --init option were initialised the ISR way.
        state["config"].setdefault("init", "isr")
        state["config"].setdefault("degradation", "bicubic")
        state["config"].setdefault("loss", "l1")
        named = {
            k.removeprefix(WEIGHT_PREFIX): data[k] for k in data if k.startswith(WEIGHT_PREFIX)
        }
        listed = [data[f"model_{i}"] for i in range(sum(k.startswith("model_") for k in data))]
        opt = [data[f"opt_{i}"] for i in range(sum(k.startswith("opt_") for k in data))]
    return state, named or names_for(listed, RDNParams.from_json(state["params"])), opt


def names_for(weights: list[np.ndarray], params: RDNParams) -> dict[str, np.ndarray]:
    """Name the weights of a checkpoint written before names were kept (in Keras'
    ``get_weights()`` order), checking each shape against the architecture."""
    names = {}
    for name, n_in, n_out, size in params.convolutions():
        names[f"{name}/kernel"] = (size, size, n_in, n_out)
        names[f"{name}/bias"] = (n_out,)
    shapes = [w.shape for w in weights]
    if shapes != list(names.values()):
        raise ValueError(f"checkpoint weights {shapes} do not fit {params.name}")
    return dict(zip(names, weights, strict=True))


def validate(
    predict: Callable[[np.ndarray], np.ndarray],
    pairs: list[tuple[np.ndarray, np.ndarray]],
    scale: int,
) -> float:
    """Mean Y-PSNR of whole-image predictions (a read-out; the evaluate module is the judge).

    ``predict`` maps a (1, h, w, 3) float batch in [0, 1] to its (1, H, W, 3) enlargement.
    """
    from supersizeme.toolchain.quality import y_psnr_ssim

    scores = []
    for hr, lr in pairs:
        sr = predict(lr[None].astype(np.float32) / 255.0)
        sr = np.clip(np.rint(np.asarray(sr[0], np.float32) * 255.0), 0, 255)
        scores.append(y_psnr_ssim(hr, sr, border=scale)[0])
    return float(np.mean(scores))


def validation_sets(
    config: TrainConfig, compressed: bool
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The validation images by condition: clean, and for a JPEG run also their LR saved
    at each of ``VALIDATION_QUALITIES``, so that the read-out shows both sides of the trade."""
    if not config.val:
        return {}
    pairs = load_image_pairs(config.val, config.scale, 1)
    sets = {"clean": pairs}
    if compressed:
        for quality in VALIDATION_QUALITIES:
            sets[f"q{quality}"] = [(hr, jpeg_round_trip(lr, quality)) for hr, lr in pairs]
    return sets


class Run:
    """What both trainers share: the resumed state, the decoded data and the loop itself.

    A trainer supplies the network's part: one optimisation step, a checkpoint writer
    and (optionally) a forward pass for the validation read-out.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out / "ckpt.npz"
        if config.resume and not self.ckpt_path.exists():
            raise SystemExit(f"--resume: no checkpoint at {self.ckpt_path}")
        self.resumed = config.resume
        # (state, weights, TensorFlow optimizer variables) to start from, if any
        self.saved: tuple[dict, dict[str, np.ndarray], list[np.ndarray]] | None = None
        if self.resumed:
            self.saved = read_checkpoint(self.ckpt_path)
            # The checkpoint's architecture wins; a changed step count or budget extends the run.
            kept = {k: v for k, v in self.saved[0]["config"].items() if k in _FIXED_BY_CHECKPOINT}
            config = dataclasses.replace(config, **kept)
        elif config.init_from:
            state, weights, _ = read_checkpoint(Path(config.init_from))
            if state["params"] != config.params.to_json():
                raise SystemExit(f"--init-from {config.init_from} holds {state['params']}")
            self.saved = (state, weights, [])
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.step, self.seconds, self.losses = 0, 0.0, []

    def restore_progress(self) -> None:
        """Step, seconds, losses and the data RNG of the checkpoint being resumed."""
        if self.saved and self.resumed:
            state = self.saved[0]
            self.rng.bit_generator.state = state["rng"]
            self.step, self.seconds = state["step"], state["seconds"]
            self.losses = state.get("losses", [])
            print(f"resumed {self.ckpt_path} at step {self.step} ({self.seconds / 60:.1f} min)")
        elif self.saved:
            print(f"weights from {self.config.init_from}; a fresh optimizer and schedule")

    def state(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "params": self.config.params.to_json(),
            "step": self.step,
            "seconds": self.seconds,
            "rng": self.rng.bit_generator.state,
            "losses": self.losses[-1000:],
        }

    def loop(
        self,
        take_step: Callable[[np.ndarray, np.ndarray, float], float],
        checkpoint: Callable[[], None],
        predict: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """Sample, step, log, checkpoint and validate until the steps or the budget run out.

        ``take_step(lr_batch, hr_batch, learning_rate)`` returns the batch's loss.
        """
        from tqdm import tqdm

        config = self.config
        if config.degradation not in DEGRADATIONS:
            raise SystemExit(f"--degradation {config.degradation}: one of {list(DEGRADATIONS)}")
        if config.loss not in LOSS_COLOUR_ROWS:
            raise SystemExit(f"--loss {config.loss}: one of {list(LOSS_COLOUR_ROWS)}")
        degrade = DEGRADATIONS[config.degradation]
        side = config.patch + (DEGRADE_MARGIN if degrade else 0)
        pairs = load_image_pairs(config.data, config.scale, side)
        areas = [(lr.shape[0] - side + 1) * (lr.shape[1] - side + 1) for _, lr in pairs]
        weights = np.array(areas, float) / sum(areas)
        val_sets = validation_sets(config, degrade is not None)
        print(f"{config.params.name}: {len(pairs)} images, {config.degradation}", flush=True)

        def stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        # A background run ignores Ctrl-C; SIGTERM (kill) then stops it with a checkpoint.
        signal.signal(signal.SIGTERM, stop)
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            mininterval=10,
            dynamic_ncols=True,
            file=sys.stdout,
        )
        budget = config.minutes * 60 if config.minutes > 0 else math.inf
        try:
            while self.step < config.steps and self.seconds < budget:
                started = time.perf_counter()
                lr_value = learning_rate(config, self.step, self.seconds)
                lr_batch, hr_batch = sample_batch(
                    self.rng, pairs, weights, config.batch, config.patch, config.scale, degrade
                )
                loss = take_step(lr_batch, hr_batch, lr_value)
                self.seconds += time.perf_counter() - started
                self.step += 1
                self.losses.append(loss)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{np.mean(self.losses[-50:]):.4f}",
                    lr=f"{lr_value:.1e}",
                    pps=f"{config.batch * self.step / max(self.seconds, 1e-9):.1f}",
                    refresh=False,
                )
                if self.step % config.checkpoint_every == 0:
                    checkpoint()
                if predict and val_sets and self.step % config.eval_every == 0:
                    scores = ", ".join(
                        f"{label} {validate(predict, val_pairs, config.scale):.3f}"
                        for label, val_pairs in val_sets.items()
                    )
                    print(f"\nstep {self.step}: validation Y-PSNR (dB) {scores}", flush=True)
        except KeyboardInterrupt:
            print("\ninterrupted; saving checkpoint", flush=True)
        finally:
            bar.close()
            checkpoint()
        (self.out / "params.json").write_text(json.dumps(config.params.to_json(), indent=2))
        print(
            f"step {self.step}, {self.seconds / 60:.1f} min, "
            f"last-50 loss {np.mean(self.losses[-50:]):.5f}; checkpoint {self.ckpt_path}"
        )


_FIXED_BY_CHECKPOINT = (
    "C",
    "D",
    "G",
    "G0",
    "scale",
    "precision",
    "patch",
    "batch",
    "seed",
    "init",
    "degradation",
    "loss",
)


def train(config: TrainConfig) -> Path:
    run = Run(config)
    config = run.config

    from supersizeme.machine import cpu_count
    from supersizeme.rdn import build_rdn, configure_threads, set_named_weights

    # cpu_count() honours taskset and container quotas, so two runs can share a machine.
    configure_threads(config.threads or cpu_count())
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    model = build_rdn(config.params, config.precision)
    if config.init == "fan-in":
        scale_init_to_fan_in(model)
    optimizer = keras.optimizers.Adam(learning_rate=config.lr)
    optimizer.build(model.trainable_variables)
    if run.saved:
        _, weights, opt_vars = run.saved
        set_named_weights(model, weights)
        # A checkpoint from the PyTorch trainer carries no Keras optimizer: Adam starts afresh.
        if opt_vars:
            for variable, value in zip(optimizer.variables, opt_vars, strict=True):
                variable.assign(value)
    run.restore_progress()
    print(f"{model.count_params():,} parameters")

    rows = tf.constant(LOSS_COLOUR_ROWS[config.loss])

    @tf.function
    def train_step(lr_batch: tf.Tensor, hr_batch: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            sr = model(lr_batch, training=True)
            difference = tf.cast(sr, tf.float32) - hr_batch
            loss = tf.reduce_mean(tf.abs(tf.einsum("nhwc,oc->nhwo", difference, rows)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def take_step(lr_batch: np.ndarray, hr_batch: np.ndarray, lr_value: float) -> float:
        optimizer.learning_rate.assign(lr_value)
        return float(train_step(lr_batch, hr_batch))

    run.loop(
        take_step,
        checkpoint=lambda: save_checkpoint(run.ckpt_path, model, optimizer, run.state()),
        predict=lambda batch: np.asarray(model(batch, training=False)),
    )
    model.save_weights(str(run.out / "weights.weights.h5"))
    return run.out


def parse_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """The command line of a trainer (this one unless ``description`` says otherwise)."""
    parser = argparse.ArgumentParser(
        description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for field in dataclasses.fields(TrainConfig):
        flag = f"--{field.name.replace('_', '-')}"
        if field.type == "bool":
            parser.add_argument(flag, action="store_true")
        else:
            kind = {"int": int, "float": float, "str": str}[field.type]
            choices = {"degradation": list(DEGRADATIONS), "loss": list(LOSS_COLOUR_ROWS)}.get(
                field.name
            )
            parser.add_argument(flag, type=kind, default=field.default, choices=choices)
    args = parser.parse_args(argv)
    config = TrainConfig(**vars(args))
    if not config.data:
        parser.error("--data (a folder of high-resolution images) is required")
    return config


if __name__ == "__main__":
    train(parse_args())
