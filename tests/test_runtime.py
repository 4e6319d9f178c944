"""The runtimes: the derived OpenVINO network against the Keras reference, precision by
the machine, and the pixel cap in force served end to end."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from hosts import AVX2_ONLY, AVX512_BF16
from PIL import Image

from benchmarks.gunicorn_server import request, running_gunicorn
from benchmarks.imagefactory import gradient, png
from supersizeme.machine import cpu_flags, native_bfloat16
from supersizeme.modelspec import ModelFolder, write_spec
from supersizeme.service.config import REPO_ROOT
from supersizeme.service.runtime import (
    BFLOAT16_MAX_LOSS_DB,
    choose_precision,
    load_network,
    stream_count,
)
from supersizeme.toolchain.evaluate import image_files, load_pair, load_served, run_png
from supersizeme.toolchain.quality import y_psnr_ssim

BENCHMARK = REPO_ROOT.parent / "shared" / "datasets" / "benchmark"
AVX2_FLAGS = cpu_flags(AVX2_ONLY.cpuinfo)
BF16_FLAGS = cpu_flags(AVX512_BF16.cpuinfo)
CHECKED = {"bfloat16_check": {"loss_db": {"set5": 0.02, "set14": 0.03}}}


def openvino_computes_bfloat16() -> bool:
    """What OpenVINO itself detects on the real CPU, whatever /proc/cpuinfo is faked to."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="session")
def checked_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a bfloat16 check on record, so that ``auto`` may choose it."""
    import shutil

    path = tmp_path_factory.mktemp("checked") / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, path)
    write_spec(path, {**ModelFolder.open(path).spec, **CHECKED})
    return path


@pytest.mark.slow
@pytest.mark.skipif(not BENCHMARK.is_dir(), reason="needs shared/datasets beside the clone")
def test_derived_network_equals_keras_on_set5_and_set14(shipped_model_dir):
    """Acceptance: every output pixel within one grey level, mean PSNR within 0.01 dB."""
    folder = ModelFolder.open(shipped_model_dir)
    scale = folder.params.scale
    derived, _ = load_served(shipped_model_dir, runtime="openvino", threads=2)
    reference, _ = load_served(shipped_model_dir, runtime="tensorflow", threads=2)
    for name in ("set5", "set14"):
        psnr = {"derived": [], "reference": []}
        for path in image_files(BENCHMARK / name):
            pair = load_pair(path, scale)
            ours, _ = run_png(derived, pair.lr)
            theirs, _ = run_png(reference, pair.lr)
            worst = np.abs(ours.astype(int) - theirs.astype(int)).max()
            assert worst <= 1, (path.name, worst)
            psnr["derived"].append(y_psnr_ssim(pair.hr, ours, border=scale)[0])
            psnr["reference"].append(y_psnr_ssim(pair.hr, theirs, border=scale)[0])
        means = {key: float(np.mean(values)) for key, values in psnr.items()}
        assert abs(means["derived"] - means["reference"]) <= 0.01, (name, means)
        recorded = folder.spec["evaluation"][name][folder.params.name]["psnr"]
        assert abs(means["derived"] - recorded) <= 0.01, (name, means, recorded)


def test_auto_takes_bfloat16_where_it_is_native_and_checked(host):
    choice = choose_precision("auto", cpu_flags(), CHECKED)
    if host.native_bfloat16:
        assert choice.precision == "bfloat16" and "native bfloat16" in choice.reason
    else:
        assert choice.precision == "float32" and "no native bfloat16" in choice.reason


def test_auto_refuses_bfloat16_unchecked_or_too_costly():
    unchecked = choose_precision("auto", BF16_FLAGS, {})
    assert unchecked.precision == "float32" and "no bfloat16 quality check" in unchecked.reason
    costly = {"bfloat16_check": {"loss_db": {"set5": 0.01, "set14": BFLOAT16_MAX_LOSS_DB + 0.01}}}
    assert choose_precision("auto", BF16_FLAGS, costly).precision == "float32"


def test_an_explicit_precision_is_kept_and_a_bad_one_refused():
    assert choose_precision("bfloat16", AVX2_FLAGS, {}).precision == "bfloat16"
    assert choose_precision("float32", BF16_FLAGS, CHECKED).precision == "float32"
    with pytest.raises(ValueError, match="precision"):
        choose_precision("int4", AVX2_FLAGS, {})


def test_the_service_reports_what_it_detected(host, checked_model_dir):
    """The app reads the flags of /proc/cpuinfo and chooses from them; what it computes
    in is what OpenVINO runs on the real CPU, which falls back to float32 without bfloat16."""
    from supersizeme.service.app import create_app

    app = create_app(
        {"TESTING": True, "MODEL_DIR": str(checked_model_dir), "PHOTO_MODEL_DIR": None, "TILE": 64}
    )
    info = app.test_client().get("/supersizeme/model").get_json()
    runtime = info["runtime"]
    assert runtime["name"] == "openvino"
    assert runtime["cpu_features"] == list(host.reported)
    assert info["precision"] == runtime["precision"]
    if not host.native_bfloat16:
        assert runtime["precision"] == "float32"
        assert "no native bfloat16" in runtime["precision_reason"]
    elif openvino_computes_bfloat16():
        assert runtime["precision"] == "bfloat16"
        assert "native bfloat16" in runtime["precision_reason"]
    else:
        assert runtime["precision"] == "float32"
        assert runtime["precision_reason"] == "bfloat16 asked, but openvino runs float32 here"
    assert runtime["seconds_per_megapixel"] > 0
    assert info["limits"]["max_pixels_configured"] is None
    assert info["limits"]["max_pixels_decided_by"] in ("speed", "memory", "upload size", "floor")


def test_openvino_runs_one_stream_per_thread_unless_told_and_tensorflow_one():
    assert stream_count("openvino", threads=2) == 2
    assert stream_count("openvino", threads=4, streams=2) == 2
    assert stream_count("tensorflow", threads=2) == 1
    with pytest.raises(ValueError, match="one tile at a time"):
        stream_count("tensorflow", threads=2, streams=2)
    with pytest.raises(ValueError, match="between 1 and the 2 threads"):
        stream_count("openvino", threads=2, streams=3)


def test_this_machine_is_detected_as_openvino_detects_it():
    """The real /proc/cpuinfo and OpenVINO agree on whether this CPU has native bfloat16."""
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    assert native_bfloat16(flags) == openvino_computes_bfloat16()


@pytest.mark.gunicorn
def test_an_image_at_the_cap_in_force_gets_200(shipped_model_dir, tmp_path):
    """The shipped model on this machine: whatever cap it set for itself, it serves."""
    with running_gunicorn(shipped_model_dir, tmp_path / "server.log") as server:
        status, _, body = request(server.port, "GET", "/supersizeme/model")
        assert status == 200
        cap = json.loads(body)["limits"]["max_pixels"]
        width = int(np.sqrt(cap * 4 / 3))
        height = cap // width
        image = Image.fromarray(gradient(width, height))
        status, _, body = request(
            server.port,
            "POST",
            "/supersizeme/",
            png(image),
            {"Content-Type": "image/png"},
            timeout=120,
        )
        assert status == 200, body[:300]
        assert Image.open(io.BytesIO(body)).size == (width * 2, height * 2)
        assert width * height <= cap


def test_the_served_runtime_does_not_import_tensorflow(tiny_model_dir):
    """OpenVINO runs the network: the worker must not pay TensorFlow's memory and start-up."""
    code = (
        "import sys; from supersizeme.service.app import create_app; "
        f"app = create_app({{'TESTING': True, 'MODEL_DIR': {str(tiny_model_dir)!r}, "
        "'PHOTO_MODEL_DIR': None}); "
        "assert app.test_client().get('/readyz').status_code == 200; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'ISR') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_tensorflow_runtime_without_tensorflow_says_where_it_comes_from(
    tiny_model_dir, monkeypatch
):
    """The serving install (requirements-serve.txt) has no TensorFlow."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object):
        return None if name == "tensorflow" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match=r"model toolchain installs \(requirements.txt\)"):
        load_network(ModelFolder.open(tiny_model_dir), "tensorflow", "float32", 1)


FRESH_PROCESSES = 20
FIRST_TILES_AT_ONCE = """
import sys, threading
import numpy as np
from supersizeme.modelspec import ModelFolder
from supersizeme.service.runtime import load_network

network = load_network(ModelFolder.open(sys.argv[1]), "openvino", "float32", 2, 2)
together = threading.Barrier(2)
tile = np.zeros((1, 16, 16, 3), np.float32)

def first_tile():
    together.wait()
    network.run(tile)

threads = [threading.Thread(target=first_tile) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


@pytest.mark.slow
def test_two_streams_first_tiles_at_once_do_not_deadlock(tiny_model_dir):
    """A process's first two tiles, started at the same instant on two streams, finish.

    The deadlock this guards against (OpenVINO's bindings setting up numpy from two
    threads) happens only on a process's first tiles, and without the guard in
    compile_openvino it took about one fresh process in four here: twelve make a miss
    unlikely (0.75**12 = 3 %).
    """
    for attempt in range(FRESH_PROCESSES):
        try:
            subprocess.run(
                [sys.executable, "-c", FIRST_TILES_AT_ONCE, str(tiny_model_dir)],
                cwd=REPO_ROOT,
                capture_output=True,
                check=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"fresh process {attempt + 1} did not finish its first two tiles")


def test_split_concatenations_computes_what_the_joined_network_does(tiny_model_dir):
    """Each convolution of joined features becomes a sum of convolutions over the parts:
    no Concat is left, and the output is the exported network's within float32 rounding."""
    import openvino

    from supersizeme.service.runtime import compile_openvino

    path = ModelFolder.open(tiny_model_dir).openvino_model()
    exported = openvino.Core().read_model(path)
    assert "Concat" in {op.get_type_name() for op in exported.get_ordered_ops()}
    # Compiled in float32 explicitly, as the split one is: OpenVINO's own default is
    # bfloat16 on CPUs that have it natively.
    joined = (
        openvino.Core()
        .compile_model(exported, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        .create_infer_request()
    )
    model = openvino.Core().read_model(path)
    split = compile_openvino(model, "float32", threads=1)
    assert "Concat" not in {op.get_type_name() for op in model.get_ordered_ops()}
    tile = np.random.default_rng(0).random((1, 40, 56, 3), np.float32)
    np.testing.assert_allclose(split.run(tile), joined.infer({0: tile})[0], atol=1e-5)
