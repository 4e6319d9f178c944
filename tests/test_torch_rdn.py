"""The PyTorch RDN is ISR's Keras RDN: same weights by name, same output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supersizeme.modelspec import RDNParams
from supersizeme.toolchain.torch_rdn import TorchRDN, depth_to_space

pytestmark = pytest.mark.training  # the GPU trainer's network, in PyTorch


@pytest.mark.parametrize("scale", [2, 3])
def test_depth_to_space_is_tensorflows(scale):
    import tensorflow as tf

    nhwc = np.random.default_rng(0).random((2, 5, 7, 3 * scale * scale), np.float32)
    expected = tf.nn.depth_to_space(nhwc, scale).numpy()
    got = depth_to_space(torch.from_numpy(nhwc).permute(0, 3, 1, 2), scale)
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), expected)


@pytest.mark.parametrize("params", [RDNParams(C=2, D=3, G=8, G0=12, scale=2)])
def test_weights_copied_by_name_give_the_keras_networks_output(params):
    from supersizeme.rdn import build_rdn, named_weights, set_named_weights

    torch.manual_seed(0)
    network = TorchRDN(params)
    keras_model = build_rdn(params, "float32")
    assert network.keras_weights().keys() == named_weights(keras_model).keys()
    set_named_weights(keras_model, network.keras_weights())

    # Not square, so that a height/width mix-up in a kernel cannot cancel out.
    lr = np.random.default_rng(1).random((1, 13, 19, 3), np.float32)
    with torch.no_grad():
        ours = network(torch.from_numpy(lr).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    theirs = np.asarray(keras_model(lr, training=False))
    assert ours.shape == theirs.shape == (1, 26, 38, 3)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)

    # And back: the Keras weights load into a fresh PyTorch network unchanged.
    again = TorchRDN(params)
    again.load_keras_weights(named_weights(keras_model))
    for name, array in again.keras_weights().items():
        np.testing.assert_array_equal(array, network.keras_weights()[name])


def test_set_named_weights_refuses_another_architecture():
    from supersizeme.rdn import build_rdn, set_named_weights

    small = TorchRDN(RDNParams(C=1, D=1, G=4, G0=4, scale=2)).keras_weights()
    with pytest.raises(ValueError, match="missing"):
        set_named_weights(build_rdn(RDNParams(C=1, D=2, G=4, G0=4, scale=2)), small)


@pytest.mark.parametrize(
    "params", [RDNParams(C=2, D=3, G=8, G0=12), RDNParams(C=3, D=6, G=32, G0=32, scale=3)]
)
def test_convolutions_list_the_weights_in_keras_order(params):
    """What names the weights of old checkpoints, kept as Keras' get_weights() list."""
    from supersizeme.rdn import build_rdn, named_weights
    from supersizeme.toolchain.train import names_for

    keras_model = build_rdn(params, "float32")
    named = names_for(keras_model.get_weights(), params)
    expected = named_weights(keras_model)
    assert list(named) == list(expected)
    assert all(np.array_equal(named[name], expected[name]) for name in expected)
    with pytest.raises(ValueError, match="do not fit"):
        names_for(keras_model.get_weights()[:-2], params)
