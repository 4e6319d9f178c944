"""The runtimes that run a model folder's network, and the precision each runs in.

OpenVINO runs the network the server uses: it is derived from the Keras weights at export
(``rdn.derive_openvino``), rewritten at load so that no features are copied into joins
(``split_concatenations``), and comes near the cores' matmul peak where the TensorFlow
graph reaches well under half of it (benchmarks/runtime.md). TensorFlow stays as the reference
runtime that the tests compare the derived network against; only that runtime imports it.

A network is a ``(1, h, w, 3) float32 -> (1, h * scale, w * scale, 3) float32`` callable
(``tiling.Network``), whichever runtime runs it, safe to call from several threads. OpenVINO
runs it on ``streams`` inference streams that split the threads between them: as many
tiles run at once as there are streams (benchmarks/runtime.md compares the layouts).
"""

from __future__ import annotations

import importlib.util
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from supersizeme.machine import native_bfloat16
from supersizeme.modelspec import ModelFolder, ModelFolderError

RUNTIMES = ("openvino", "tensorflow")
PRECISIONS = ("auto", "float32", "bfloat16")

# What bfloat16 may cost in quality before `auto` refuses it, and where it is measured.
BFLOAT16_MAX_LOSS_DB = 0.05
BFLOAT16_CHECKED_SETS = ("set5", "set14")

OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16"}


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # float32 or bfloat16
    reason: str


def bfloat16_loss(spec: dict[str, Any]) -> dict[str, float] | None:
    """The Y-PSNR that bfloat16 loses per benchmark set, as model.json records it."""
    record = spec.get("bfloat16_check") or {}
    losses = record.get("loss_db") or {}
    if not all(name in losses for name in BFLOAT16_CHECKED_SETS):
        return None
    return {name: float(losses[name]) for name in BFLOAT16_CHECKED_SETS}


def choose_precision(
    requested: str, flags: frozenset[str], spec: dict[str, Any]
) -> PrecisionChoice:
    """The precision to serve in: ``auto`` takes bfloat16 only where it is both native and
    measured to cost at most ``BFLOAT16_MAX_LOSS_DB`` on Set5 and Set14.

    Without native bfloat16 instructions (AVX-512 BF16, AMX) the CPU emulates it, slower
    than float32, so there is nothing to gain from it there.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {requested!r}")
    if requested != "auto":
        return PrecisionChoice(requested, "set by SSM_PRECISION")
    if not native_bfloat16(flags):
        return PrecisionChoice("float32", "this CPU has no native bfloat16 (avx512_bf16, amx_bf16)")
    losses = bfloat16_loss(spec)
    if losses is None:
        return PrecisionChoice("float32", "the model folder records no bfloat16 quality check")
    worst = max(losses.values())
    if worst > BFLOAT16_MAX_LOSS_DB:
        return PrecisionChoice(
            "float32", f"bfloat16 loses {worst:.3f} dB, over {BFLOAT16_MAX_LOSS_DB} dB"
        )
    return PrecisionChoice("bfloat16", f"native bfloat16; loses at most {worst:.3f} dB")


Network = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LoadedNetwork:
    run: Network
    runtime: str
    precision: str  # what the runtime computes in, as it reports it
    streams: int  # how many calls of ``run`` compute at once


def stream_count(runtime: str, threads: int, streams: int = 0) -> int:
    """How many tiles ``runtime`` computes at once: ``streams``, or by default (0) one per
    thread in OpenVINO, where a stream of one core each came closest to the matmul peak
    (benchmarks/runtime.md). TensorFlow's graph runs one tile at a time on every thread."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime == "tensorflow":
        if streams > 1:
            raise ValueError("the tensorflow runtime computes one tile at a time (streams 1)")
        return 1
    if not 0 <= streams <= threads:
        raise ValueError(f"streams must be between 1 and the {threads} threads, not {streams}")
    return streams or threads


def load_network(
    folder: ModelFolder, runtime: str, precision: str, threads: int, streams: int = 0
) -> LoadedNetwork:
    """The folder's network in ``runtime``, computing in ``precision`` on ``threads`` cores,
    ``stream_count(runtime, threads, streams)`` tiles at once."""
    streams = stream_count(runtime, threads, streams)
    if runtime == "openvino":
        return _openvino(folder, precision, threads, streams)
    return _tensorflow(folder, precision, threads)


def _openvino(folder: ModelFolder, precision: str, threads: int, streams: int) -> LoadedNetwork:
    import openvino

    model = openvino.Core().read_model(folder.openvino_model())
    _check_architecture(model, folder)
    return compile_openvino(model, precision, threads, streams)


def concatenated_inputs(source: Any) -> list[Any]:
    """The outputs that a channel Concat (nested ones included) joins, in order; ``source``
    itself if it is not one."""
    node = source.get_node()
    if node.get_type_name() != "Concat" or node.get_attributes()["axis"] != 1:
        return [source]
    return [part for i in node.inputs() for part in concatenated_inputs(i.get_source_output())]


def split_concatenations(model: Any) -> Any:
    """``model`` with every convolution of concatenated features turned into the sum of
    one convolution per part, each with its slice of the weights; changed in place.

    A residual dense block feeds each layer everything before it, joined along the
    channels. OpenVINO's CPU plugin copies those growing joins for every layer, where the
    sum it fuses into the convolutions (a sum post-op) costs next to nothing, so the
    network computes the same (within float32 rounding) in less time (benchmarks/runtime.md).
    """
    import openvino.opset13 as ops

    for conv in model.get_ordered_ops():
        if conv.get_type_name() != "Convolution":
            continue
        parts = concatenated_inputs(conv.input(0).get_source_output())
        if len(parts) == 1:
            continue
        weights = conv.input(1).get_source_output().get_node().get_data()
        attributes = conv.get_attributes()
        settings = [attributes[name] for name in ("strides", "pads_begin", "pads_end", "dilations")]
        total, start = None, 0
        for part in parts:
            end = start + part.get_partial_shape()[1].get_length()
            kernel = ops.constant(np.ascontiguousarray(weights[:, start:end]))
            piece = ops.convolution(part, kernel, *settings, attributes["auto_pad"])
            total = piece if total is None else ops.add(total, piece)
            start = end
        if start != weights.shape[1]:
            raise ValueError(f"{conv.get_friendly_name()}: its parts do not fill its weights")
        for target in list(conv.output(0).get_target_inputs()):
            target.replace_source_output(total.output(0))
    model.validate_nodes_and_infer_types()
    return model


def compile_openvino(model: Any, precision: str, threads: int, streams: int = 1) -> LoadedNetwork:
    """An OpenVINO model compiled for this CPU: ``streams`` tiles at once, sharing
    ``threads`` cores between them. ``model`` is changed (split_concatenations)."""
    import openvino

    compiled = openvino.Core().compile_model(
        split_concatenations(model),
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": streams,
            "INFERENCE_NUM_THREADS": threads,
            # Pinned, the threads of every worker process start on the same first cores:
            # two one-thread workers measured half their speed each, sharing one core.
            "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision],
        },
    )
    # OpenVINO falls back to float32 where the CPU lacks bfloat16; report what it runs.
    computed = compiled.get_property("INFERENCE_PRECISION_HINT")
    in_force = "bfloat16" if computed == openvino.Type.bf16 else "float32"
    # The first Tensor.data of a process sets up pybind11's numpy bridge inside a C++
    # function-local static of OpenVINO's bindings. Two threads that get there at once
    # deadlock: one holds the static's guard and waits for the GIL, the other holds the
    # GIL and waits for the guard. The streams' first tiles at warm-up start together, so
    # it is set up here, once, on the loading thread, before ``run`` can be called.
    _ = openvino.Tensor(np.zeros(1, np.float32)).data
    # One infer request per stream, each running one tile at a time: a caller takes a free
    # one, or waits for one, so any number of threads may call ``run``.
    idle: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(streams):
        idle.put(compiled.create_infer_request())

    def run(batch: np.ndarray) -> np.ndarray:
        request = idle.get()
        try:
            # infer copies the input in and the output out (share_inputs, share_outputs
            # False), so a tile cut from the image needs no copy of its own and the result
            # outlives the request's next call.
            return request.infer({0: batch})[0]
        finally:
            idle.put(request)

    return LoadedNetwork(run, "openvino", in_force, streams)


def _check_architecture(model: Any, folder: ModelFolder) -> None:
    """The derived network's convolutions must be the ones model.json describes: the
    tiles' overlap and the scale are taken from there."""
    found = sorted(
        tuple(op.input(1).get_partial_shape().to_shape())
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Convolution"
    )
    expected = sorted(
        (n_out, n_in, size, size) for _, n_in, n_out, size in folder.params.convolutions()
    )
    if found != expected:
        raise ModelFolderError(
            f"the OpenVINO network's convolutions in {folder.path} do not fit {folder.params.name}"
        )


def _tensorflow(folder: ModelFolder, precision: str, threads: int) -> LoadedNetwork:
    # The serving install (requirements-serve.txt, the container image) has no TensorFlow.
    if importlib.util.find_spec("tensorflow") is None:
        raise ModuleNotFoundError(
            "the tensorflow runtime needs TensorFlow, which the model toolchain installs "
            "(requirements.txt); SSM_RUNTIME=openvino serves without it"
        )
    from supersizeme.rdn import compile_network, configure_threads, load_rdn

    configure_threads(threads)
    return LoadedNetwork(compile_network(load_rdn(folder, precision)), "tensorflow", precision, 1)
