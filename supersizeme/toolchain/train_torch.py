"""The same training run in PyTorch, for the GPU machines that have no TensorFlow.

    python -m supersizeme.toolchain.train_torch --data data/train --val data/set5 --out runs/gpu \\
        --C 3 --D 6 --G 32 --G0 32 --batch 32 --lr 3e-4 --steps 60000 --minutes 9

Same options, data, sampling, schedule, loss and checkpoint file as ``supersizeme.toolchain.train``
(the loop is shared); only the network step runs in PyTorch, on CUDA when there is one.
The checkpoint keeps the weights by layer name in Keras' layout, so
``python -m supersizeme.toolchain.export --checkpoint <out>/ckpt.npz`` turns it into a served model
folder on a machine with TensorFlow, and ``supersizeme.toolchain.train --resume`` can carry on from
it there. ``--resume`` here also starts from a TensorFlow checkpoint's weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from supersizeme.rdn import PRECISIONS
from supersizeme.toolchain.torch_rdn import TorchRDN, from_keras, to_keras
from supersizeme.toolchain.train import (
    LOSS_COLOUR_ROWS,
    WEIGHT_PREFIX,
    Run,
    TrainConfig,
    parse_args,
    write_checkpoint,
)

ADAM_PREFIXES = {"exp_avg": "adam_m/", "exp_avg_sq": "adam_v/"}


def isr_init(model: TorchRDN) -> None:
    """ISR's U(+-0.05) for every kernel and bias; PyTorch's default is already fan-in."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-0.05, 0.05)


def train(config: TrainConfig) -> Path:
    if config.precision not in PRECISIONS:
        raise SystemExit(f"--precision must be one of {PRECISIONS}")
    run = Run(config)
    config = run.config
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    # One patch size all run long: let cuDNN pick its fastest kernels. They are not all
    # deterministic, so on a GPU a resumed run is close to, not bit-equal to, a straight one.
    torch.backends.cudnn.benchmark = True
    model = TorchRDN(config.params)
    if config.init == "isr":
        isr_init(model)
    if run.saved:
        model.load_keras_weights(run.saved[1])
    model = model.to(device, memory_format=torch.channels_last)
    params = model.named_tensors()
    # Keras' epsilon, so that both trainers take the same steps.
    optimizer = torch.optim.Adam(params.values(), lr=config.lr, eps=1e-7)
    if run.resumed:
        with np.load(run.ckpt_path) as data:
            # Our own checkpoint: Adam carries on (after TensorFlow's, it starts afresh).
            if "adam_m/F_m1/kernel" in data:
                step = torch.tensor(float(run.saved[0]["adam_step"]))
                for name, parameter in params.items():
                    optimizer.state[parameter] = {"step": step.clone()} | {
                        key: torch.zeros_like(parameter).copy_(
                            from_keras(name, data[prefix + name])
                        )
                        for key, prefix in ADAM_PREFIXES.items()
                    }
    run.restore_progress()
    print(f"{sum(p.numel() for p in params.values()):,} parameters on {device}", flush=True)

    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16"
    )

    rows = torch.from_numpy(LOSS_COLOUR_ROWS[config.loss]).to(device)

    def to_device(batch: np.ndarray) -> torch.Tensor:
        nchw = torch.from_numpy(batch).permute(0, 3, 1, 2)
        return nchw.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def take_step(lr_batch: np.ndarray, hr_batch: np.ndarray, lr_value: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr_value
        with autocast:
            sr = model(to_device(lr_batch))
        difference = sr.float() - to_device(hr_batch)
        loss = torch.mean(torch.abs(torch.einsum("nchw,oc->nohw", difference, rows)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    @torch.no_grad()
    def predict(batch: np.ndarray) -> np.ndarray:
        with autocast:
            sr = model(to_device(batch))
        return sr.float().permute(0, 2, 3, 1).cpu().numpy()

    def checkpoint() -> None:
        arrays = {WEIGHT_PREFIX + n: to_keras(n, p) for n, p in params.items()}
        adam_step = 0
        for name, parameter in params.items():
            if moments := optimizer.state.get(parameter):
                adam_step = int(moments["step"])
                for key, prefix in ADAM_PREFIXES.items():
                    arrays[prefix + name] = to_keras(name, moments[key])
        state = run.state()
        state["adam_step"] = adam_step
        state["trainer"] = f"pytorch {torch.__version__} on {device_name(device)}"
        write_checkpoint(run.ckpt_path, state, arrays)

    model.train()
    run.loop(take_step, checkpoint, predict)
    return run.out


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


if __name__ == "__main__":
    train(parse_args(description=__doc__))
