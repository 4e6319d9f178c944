"""ISR's RDN rebuilt in PyTorch, layer for layer, for training on a GPU machine.

The GPU machines some sessions are lent have PyTorch and no TensorFlow. This network has
the same layers as ``ISR.models.RDN`` with ``upscaling="shuffle"`` (same names, same
order of concatenation, "same" padding, ReLU placement, depth_to_space channel order),
so its weights copy into the Keras network the server loads by name alone, with each
kernel transposed from PyTorch's (out, in, height, width) to Keras' (height, width, in,
out). ``tests/test_torch_rdn.py`` checks that both networks give the same output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from supersizeme.modelspec import RDNParams

KERNEL, BIAS = "kernel", "bias"


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
    def __init__(self, params: RDNParams, channels: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        self.params = params
        C, D, G, G0 = params.C, params.D, params.G, params.G0

        def conv(n_in: int, n_out: int, size: int = kernel_size) -> nn.Conv2d:
            return nn.Conv2d(n_in, n_out, size, padding=size // 2)

        layers = {"F_m1": conv(channels, G0), "F_0": conv(G0, G0)}
        for d in range(1, D + 1):
            for c in range(1, C + 1):
                layers[f"F_{d}_{c}"] = conv(G0 + (c - 1) * G, G)
            layers[f"LFF_{d}"] = conv(G0 + C * G, G0, 1)
        layers["GFF_1"] = conv(D * G0, G0, 1)
        layers["GFF_2"] = conv(G0, G0)
        layers["UPN1"] = conv(G0, 64, 5)
        layers["UPN2"] = conv(64, 32)
        layers["UPN3"] = conv(32, channels * params.scale**2)
        layers["SR"] = conv(channels, channels)
        self.layers = nn.ModuleDict(layers)

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

    def keras_weights(self) -> dict[str, np.ndarray]:
        """``{"<layer>/kernel": (h, w, in, out), "<layer>/bias": (out,)}`` for Keras."""
        named = {}
        for name, layer in self.layers.items():
            named[f"{name}/{KERNEL}"] = to_keras_kernel(layer.weight.detach().cpu().numpy())
            named[f"{name}/{BIAS}"] = layer.bias.detach().cpu().numpy()
        return named

    def load_keras_weights(self, named: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.weight.copy_(torch.from_numpy(from_keras_kernel(named[f"{name}/{KERNEL}"])))
                layer.bias.copy_(torch.from_numpy(named[f"{name}/{BIAS}"]))


def to_keras_kernel(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0), np.float32)


def from_keras_kernel(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), np.float32)
