"""Building ISR's RDN in Keras: the one module of the server that imports TensorFlow.

Training, evaluation and serving all build the network here, so the weights that are
trained are the weights that are served.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from supersizeme.modelspec import (
    OPENVINO_DIR,
    OPENVINO_FILES,
    WEIGHTS_FILE,
    ModelFolder,
    ModelFolderError,
    RDNParams,
    sha256_of,
    write_spec,
)

if TYPE_CHECKING:
    import keras
    import openvino
    import tensorflow as tf

PRECISIONS = ("float32", "bfloat16")


def import_tensorflow() -> ModuleType:
    """TensorFlow, imported with the process's native stderr muted for the first import.

    TensorFlow 2.21 writes an absl banner and "oneDNN custom operations are on" to file
    descriptor 2 at import whatever TF_CPP_MIN_LOG_LEVEL says (tensorflow/tensorflow#100442);
    in the CLI's output and in every worker's log it reads like an error. A failing import
    still raises as usual once stderr is back.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tensorflow


def configure_threads(intra_op: int, inter_op: int = 1) -> None:
    """Fix TensorFlow's thread pools; must run before TensorFlow starts any op.

    Workers x threads should equal the cores: several workers that each spawn a thread
    per core only fight over the same cores.
    """
    tf = import_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        # Already initialised in this process (a second app in the test suite): the
        # first setting stays, which is all TensorFlow allows.
        logging.getLogger("supersizeme").warning(
            "TensorFlow already started; keeping its %d intra-op threads (asked for %d)",
            tf.config.threading.get_intra_op_parallelism_threads(),
            intra_op,
        )


@contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_rdn(
    params: RDNParams, precision: str = "float32", patch_size: int | None = None
) -> keras.Model:
    """ISR's RDN with these parameters; variables stay float32 in either precision."""
    import_tensorflow()
    # ISR's utils module opens a FileHandler on ./log_file at import unless its logger
    # already has a handler: in a read-only working directory (the container runs as an
    # unprivileged user) that import would fail.
    logging.getLogger("ISR.utils.utils").addHandler(logging.NullHandler())
    from ISR.models import RDN

    arch = {"C": params.C, "D": params.D, "G": params.G, "G0": params.G0, "x": params.scale}
    with _dtype_policy(precision):
        return RDN(arch_params=arch, patch_size=patch_size, upscaling=params.upscaling).model


def load_rdn(folder: ModelFolder, precision: str = "float32") -> keras.Model:
    """The network of a model folder with its weights; a mismatch is a ModelFolderError."""
    model = build_rdn(folder.params, precision)
    try:
        model.load_weights(str(folder.weights_path))
    except (ValueError, KeyError, OSError) as exc:
        raise ModelFolderError(
            f"weights {folder.weights_path} do not fit {folder.params.name}: {exc}"
        ) from exc
    return model


def _convolutions(model: keras.Model) -> list[keras.layers.Conv2D]:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def named_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """``{"<layer>/kernel": ..., "<layer>/bias": ...}``: every weight of the RDN, by name."""
    named = {}
    for layer in _convolutions(model):
        named[f"{layer.name}/kernel"], named[f"{layer.name}/bias"] = layer.get_weights()
    return named


def set_named_weights(model: keras.Model, named: dict[str, np.ndarray]) -> None:
    """Load weights by layer name; a missing, extra or misshapen one is a ValueError."""
    expected = set(named_weights(model))
    if set(named) != expected:
        raise ValueError(
            f"weights do not fit the network: missing {sorted(expected - set(named))}, "
            f"unexpected {sorted(set(named) - expected)}"
        )
    for layer in _convolutions(model):
        layer.set_weights([named[f"{layer.name}/kernel"], named[f"{layer.name}/bias"]])


def _graph(
    model: keras.Model, jit_compile: bool = False
) -> tf.types.experimental.PolymorphicFunction:
    """The forward pass as one TensorFlow graph for any input size.

    Graph mode lets TensorFlow fuse each convolution with its bias and ReLU, and one
    signature with free height and width keeps tiles of new sizes from retracing.
    ``jit_compile`` hands the graph to XLA (compiled once per input size).
    """
    import tensorflow as tf

    @tf.function(
        input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)], jit_compile=jit_compile
    )
    def forward(batch: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(batch, training=False), tf.float32)

    return forward


def compile_network(
    model: keras.Model, jit_compile: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """The reference runtime: the Keras network in a TensorFlow graph, traced once."""
    import tensorflow as tf

    forward = _graph(model, jit_compile)

    def run(batch: np.ndarray) -> np.ndarray:
        return forward(tf.constant(batch, tf.float32)).numpy()

    return run


def to_openvino(model: keras.Model) -> openvino.Model:
    """The network as an OpenVINO model, converted from the graph the reference runs."""
    import openvino

    converted = openvino.convert_model(_graph(model))
    # The converter names nodes and tensors after process-wide counters (Keras' model and
    # layer counts, OpenVINO's node ids): renamed by their place in the graph, the same
    # weights give the same file whatever ran before in the process.
    for index, op in enumerate(converted.get_ordered_ops()):
        op.set_friendly_name(f"{op.get_type_name()}_{index}")
        for port, output in enumerate(op.outputs()):
            output.get_tensor().set_names({f"{op.get_type_name()}_{index}:{port}"})
    return converted


def derive_openvino(folder: ModelFolder) -> ModelFolder:
    """Convert the folder's float32 Keras network to OpenVINO and record both checksums.

    The conversion reads the same traced graph that the reference runtime runs, with the
    weights kept in float32 (no fp16 compression); it is deterministic, so deriving again
    from the same weights writes the same bytes. Precision is chosen later, when the
    server compiles the network for the CPU it finds.
    """
    import openvino

    converted = to_openvino(load_rdn(folder, "float32"))
    where = folder.path / OPENVINO_DIR
    where.mkdir(exist_ok=True)
    xml = where / OPENVINO_FILES[0]
    openvino.save_model(converted, str(xml), compress_to_fp16=False)
    spec = {
        **folder.spec,
        "openvino": {
            "version": openvino.get_version(),
            "weights_sha256": folder.spec.get("weights_sha256"),
            "sha256": {name: sha256_of(where / name) for name in OPENVINO_FILES},
        },
    }
    write_spec(folder.path, spec)
    return ModelFolder.open(folder.path)


def save_model_folder(
    model: keras.Model, params: RDNParams, path: str | Path, spec: dict | None = None
) -> ModelFolder:
    """Write ``model``'s weights, their OpenVINO form and a ``model.json`` (parameters,
    checksums, ``spec``)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    model.save_weights(str(weights))
    write_spec(
        folder,
        {
            "name": params.name,
            **params.to_json(),
            "weights_sha256": sha256_of(weights),
            **(spec or {}),
        },
    )
    return derive_openvino(ModelFolder.open(folder))
