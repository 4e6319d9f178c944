"""ISR's RDN rebuilt in PyTorch, layer for layer, for training on a GPU machine.

The GPU machines some sessions are lent have PyTorch and no TensorFlow. This network has
the same layers as ``ISR.models.RDN`` with ``upscaling="shuffle"`` (``RDNParams.
convolutions()``: same names and shapes; same order of concatenation, "same" padding,
ReLU placement and depth_to_space channel order), so its weights copy into the Keras
network the server loads by name alone, each kernel transposed from PyTorch's (out, in,
height, width) to Keras' (height, width, in, out). ``tests/test_torch_rdn.py`` checks that
both networks give the same output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from supersizeme.modelspec import RDNParams


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """``tf.nn.depth_to_space`` on an NCHW tensor.

    TensorFlow reads input channel (dy * block + dx) * C + c into output channel c at
    offset (dy, dx); ``torch.nn.PixelShuffle`` orders channels c * block**2 + dy * block + dx.
    Keeping TensorFlow's order lets the convolution before it copy over unchanged.
    """
    n, channels, h, w = x.shape
    c = channels // (block * block)
    x = x.view(n, block, block, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(n, c, h * block, w * block)


class TorchRDN(nn.Module):
    def __init__(self, params: RDNParams) -> None:
        super().__init__()
        self.params = params
        self.layers = nn.ModuleDict(
            {
                name: nn.Conv2d(n_in, n_out, size, padding=size // 2)
                for name, n_in, n_out, size in params.convolutions()
            }
        )

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """NCHW in, NCHW out, like ISR's network on [0, 1] inputs."""
        L = self.layers
        f_m1 = L["F_m1"](lr)
        rdb_in = L["F_0"](f_m1)
        rdb_outs = []
        for d in range(1, self.params.D + 1):
            x = rdb_in
            for c in range(1, self.params.C + 1):
                x = torch.cat([x, torch.relu(L[f"F_{d}_{c}"](x))], dim=1)
            rdb_in = L[f"LFF_{d}"](x) + rdb_in
            rdb_outs.append(rdb_in)
        fdf = L["GFF_2"](L["GFF_1"](torch.cat(rdb_outs, dim=1))) + f_m1
        x = torch.relu(L["UPN1"](fdf))
        x = torch.relu(L["UPN2"](x))
        x = depth_to_space(L["UPN3"](x), self.params.scale)
        return L["SR"](x)

    def named_tensors(self) -> dict[str, nn.Parameter]:
        """The parameters under Keras' weight names: ``{"F_m1/kernel": ..., "F_m1/bias": ...}``."""
        return {
            f"{name}/{'kernel' if kind == 'weight' else 'bias'}": parameter
            for name, layer in self.layers.items()
            for kind, parameter in layer.named_parameters()
        }

    def keras_weights(self) -> dict[str, np.ndarray]:
        """Every weight by Keras name, in Keras' layout."""
        return {name: to_keras(name, tensor) for name, tensor in self.named_tensors().items()}

    def load_keras_weights(self, named: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, parameter in self.named_tensors().items():
                parameter.copy_(from_keras(name, named[name]))


def to_keras(name: str, tensor: torch.Tensor) -> np.ndarray:
    """A parameter (or an optimizer moment of it) as Keras holds it; ``name`` tells which."""
    array = tensor.detach().float().cpu().numpy()
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0) if name.endswith("kernel") else array)


def from_keras(name: str, array: np.ndarray) -> torch.Tensor:
    array = array.transpose(3, 2, 0, 1) if name.endswith("kernel") else array
    return torch.from_numpy(np.ascontiguousarray(array, np.float32))
