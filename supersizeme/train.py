"""Train an RDN for x2 super-resolution on any folder of high-resolution images.

    python -m supersizeme.train --data ../shared/datasets/train --out runs/small \\
        --C 3 --D 10 --G 64 --G0 64 --steps 8000 --minutes 120

One loop, in the spirit of nanoGPT's train.py: the defaults sit in ``TrainConfig``;
each step draws random aligned LR/HR crops (one of the 8 flips/rotations each), takes
an Adam step on the L1 loss, and follows a warm-up then cosine learning-rate decay.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from supersizeme.modelspec import RDNParams
from supersizeme.protocol import hr_lr_pair

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
    batch: int = 16
    # optimisation
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


def sample_batch(
    rng: np.random.Generator,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    weights: np.ndarray,
    batch: int,
    patch: int,
    scale: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Random aligned crops, images drawn in proportion to their area; floats in [0, 1]."""
    lr_batch = np.empty((batch, patch, patch, 3), np.float32)
    hr_batch = np.empty((batch, patch * scale, patch * scale, 3), np.float32)
    for i, index in enumerate(rng.choice(len(pairs), size=batch, p=weights)):
        hr, lr = pairs[index]
        y = rng.integers(0, lr.shape[0] - patch + 1)
        x = rng.integers(0, lr.shape[1] - patch + 1)
        transform = int(rng.integers(0, 8))
        lr_batch[i] = augment(lr[y : y + patch, x : x + patch], transform)
        hy, hx, hp = y * scale, x * scale, patch * scale
        hr_batch[i] = augment(hr[hy : hy + hp, hx : hx + hp], transform)
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


def save_checkpoint(
    path: Path, model: keras.Model, optimizer: keras.Optimizer, state: dict
) -> None:
    arrays = {f"model_{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"opt_{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(state)), **arrays)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """(state, model weights, optimizer variables) of a checkpoint written by this module."""
    with np.load(path, allow_pickle=False) as data:
        state = json.loads(str(data["meta"]))
        # Checkpoints from before the --init option were initialised the ISR way.
        state["config"].setdefault("init", "isr")
        model = [data[f"model_{i}"] for i in range(sum(k.startswith("model_") for k in data))]
        opt = [data[f"opt_{i}"] for i in range(sum(k.startswith("opt_") for k in data))]
    return state, model, opt


def validate(model: keras.Model, pairs: list[tuple[np.ndarray, np.ndarray]], scale: int) -> float:
    """Mean Y-PSNR of whole-image predictions (a read-out; the evaluate module is the judge)."""
    from supersizeme.metrics import y_psnr_ssim

    scores = []
    for hr, lr in pairs:
        sr = model(lr[None].astype(np.float32) / 255.0, training=False)
        sr = np.clip(np.rint(np.asarray(sr[0], np.float32) * 255.0), 0, 255)
        scores.append(y_psnr_ssim(hr, sr, border=scale)[0])
    return float(np.mean(scores))


def train(config: TrainConfig) -> Path:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.npz"
    saved = read_checkpoint(ckpt_path) if config.resume and ckpt_path.exists() else None
    if saved:
        # The checkpoint's architecture wins; a changed step count or budget extends the run.
        state = saved[0]
        keep = {
            k: v
            for k, v in state["config"].items()
            if k in ("C", "D", "G", "G0", "scale", "precision", "patch", "batch", "seed", "init")
        }
        config = dataclasses.replace(config, **keep)

    from supersizeme.config import cpu_count
    from supersizeme.rdn import build_rdn, configure_threads

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
    rng = np.random.default_rng(config.seed)
    step, seconds = 0, 0.0
    if saved:
        state, weights, opt_vars = saved
        model.set_weights(weights)
        for variable, value in zip(optimizer.variables, opt_vars, strict=True):
            variable.assign(value)
        rng.bit_generator.state = state["rng"]
        step, seconds = state["step"], state["seconds"]
        print(f"resumed {ckpt_path} at step {step} ({seconds / 60:.1f} min trained)")

    pairs = load_image_pairs(config.data, config.scale, config.patch)
    areas = np.array(
        [(lr.shape[0] - config.patch + 1) * (lr.shape[1] - config.patch + 1) for _, lr in pairs],
        float,
    )
    weights = areas / areas.sum()
    val_pairs = load_image_pairs(config.val, config.scale, 1) if config.val else []
    print(
        f"{config.params.name}: {model.count_params():,} parameters, {len(pairs)} training images"
    )

    @tf.function
    def train_step(lr_batch: tf.Tensor, hr_batch: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            sr = model(lr_batch, training=True)
            loss = tf.reduce_mean(tf.abs(tf.cast(sr, tf.float32) - hr_batch))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def checkpoint() -> None:
        state = {
            "config": dataclasses.asdict(config),
            "params": config.params.to_json(),
            "step": step,
            "seconds": seconds,
            "rng": rng.bit_generator.state,
            "losses": losses[-1000:],
        }
        save_checkpoint(ckpt_path, model, optimizer, state)

    from tqdm import tqdm

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # A background run ignores Ctrl-C; SIGTERM (kill) then stops it with a checkpoint.
    signal.signal(signal.SIGTERM, stop)
    losses: list[float] = saved[0].get("losses", []) if saved else []
    bar = tqdm(
        total=config.steps, initial=step, mininterval=10, dynamic_ncols=True, file=sys.stdout
    )
    budget = config.minutes * 60 if config.minutes > 0 else math.inf
    try:
        while step < config.steps and seconds < budget:
            started = time.perf_counter()
            lr_value = learning_rate(config, step, seconds)
            optimizer.learning_rate.assign(lr_value)
            lr_batch, hr_batch = sample_batch(
                rng, pairs, weights, config.batch, config.patch, config.scale
            )
            loss = float(train_step(lr_batch, hr_batch))
            seconds += time.perf_counter() - started
            step += 1
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(
                loss=f"{np.mean(losses[-50:]):.4f}",
                lr=f"{lr_value:.1e}",
                pps=f"{config.batch * step / max(seconds, 1e-9):.1f}",
                refresh=False,
            )
            if step % config.checkpoint_every == 0:
                checkpoint()
            if val_pairs and step % config.eval_every == 0:
                print(
                    f"\nstep {step}: validation Y-PSNR "
                    f"{validate(model, val_pairs, config.scale):.3f} dB",
                    flush=True,
                )
    except KeyboardInterrupt:
        print("\ninterrupted; saving checkpoint", flush=True)
    finally:
        bar.close()
        checkpoint()
    model.save_weights(str(out / "weights.weights.h5"))
    (out / "params.json").write_text(json.dumps(config.params.to_json(), indent=2))
    print(
        f"step {step}, {seconds / 60:.1f} min, "
        f"last-50 loss {np.mean(losses[-50:]):.5f}; weights in {out}"
    )
    return out


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for field in dataclasses.fields(TrainConfig):
        flag = f"--{field.name.replace('_', '-')}"
        if field.type == "bool":
            parser.add_argument(flag, action="store_true")
        else:
            kind = {"int": int, "float": float, "str": str}[field.type]
            parser.add_argument(flag, type=kind, default=field.default)
    args = parser.parse_args(argv)
    config = TrainConfig(**vars(args))
    if not config.data:
        parser.error("--data (a folder of high-resolution images) is required")
    return config


if __name__ == "__main__":
    train(parse_args())
