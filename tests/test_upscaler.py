"""Loading a model folder: the checks that stop start-up, and the loaded network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from supersizeme.machine import cpu_count
from supersizeme.modelspec import ModelFolder, ModelFolderError
from supersizeme.service import capacity
from supersizeme.service import upscaler as upscaler_module
from supersizeme.service.config import REPO_ROOT
from supersizeme.service.routing import CLEAN
from supersizeme.service.runtime import RUNTIMES
from supersizeme.service.upscaler import LoadSettings, ModelSlot, PixelCap, load

CAP = PixelCap(configured=None, deadline_seconds=60.0, memory_bytes=64 * 2**30)


def copy_folder(source, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(source, target)
    return target


def test_missing_weights_stop_start_up(tiny_model_dir, tmp_path):
    from supersizeme.service.app import create_app

    folder = copy_folder(tiny_model_dir, tmp_path)
    (folder / "weights.weights.h5").unlink()
    with pytest.raises(ModelFolderError, match="no weights file"):
        create_app({"MODEL_DIR": str(folder), "PHOTO_MODEL_DIR": None})


def test_changed_weights_fail_the_checksum(tiny_model_dir, tmp_path):
    folder = copy_folder(tiny_model_dir, tmp_path)
    with open(folder / "weights.weights.h5", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelFolderError, match="sha256"):
        ModelFolder.open(folder)


def test_weights_of_another_architecture_are_refused(tiny_model_dir, tmp_path):
    folder = copy_folder(tiny_model_dir, tmp_path)
    spec = json.loads((folder / "model.json").read_text())
    spec["G"] = 8
    (folder / "model.json").write_text(json.dumps(spec))
    for runtime in RUNTIMES:
        slot = ModelSlot({CLEAN: ModelFolder.open(folder)}, LoadSettings(runtime, tile=32), CAP)
        with pytest.raises(ModelFolderError, match="do not fit"):
            slot.load()
        assert slot.state == "failed"


def test_loaded_network_doubles_the_image_and_is_cached(tiny_model_dir):
    folder = ModelFolder.open(tiny_model_dir)
    upscaler = load(folder, LoadSettings(tile=32))
    assert load(folder, LoadSettings(tile=32)) is upscaler
    result = upscaler(np.random.default_rng(0).random((20, 30, 3), dtype=np.float32))
    assert result.shape == (40, 60, 3) and result.dtype == np.float32


def test_the_cache_holds_one_upscaler_per_cpu(tiny_model_dir, tmp_path, monkeypatch):
    """A load decides from the CPU's flags, so an upscaler loaded under other flags (a
    fake /proc/cpuinfo) is not handed back."""
    from hosts import AVX2_ONLY, AVX512_BF16

    from supersizeme import machine

    folder = ModelFolder.open(tiny_model_dir)
    loaded = {}
    for kind in (AVX2_ONLY, AVX512_BF16):
        fake = tmp_path / kind.name
        fake.write_text(kind.cpuinfo)
        monkeypatch.setattr(machine, "CPUINFO", fake)
        loaded[kind.name] = load(folder, LoadSettings(tile=32))
        assert loaded[kind.name].cpu_features == list(kind.reported)
        assert load(folder, LoadSettings(tile=32)) is loaded[kind.name]
    assert loaded[AVX2_ONLY.name] is not loaded[AVX512_BF16.name]


def test_tiled_equals_whole_for_the_tiny_rdn(tiny_model_dir):
    folder = ModelFolder.open(tiny_model_dir)
    image = np.random.default_rng(0).random((70, 90, 3), dtype=np.float32)
    whole = load(folder, LoadSettings(tile=1024))(image)
    tiled = load(folder, LoadSettings(tile=24))(image)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_two_streams_give_what_one_gives(tiny_model_dir):
    folder = ModelFolder.open(tiny_model_dir)
    image = np.random.default_rng(0).random((150, 90, 3), dtype=np.float32)
    one = load(folder, LoadSettings(tile=1024, threads=1))
    two = load(folder, LoadSettings(tile=1024, threads=2, streams=2))
    assert (one.streams, two.streams) == (1, 2)
    np.testing.assert_allclose(two(image), one(image), atol=1e-5)  # two(image): cut in two


def test_receptive_radius_matches_the_real_network(tiny_model_dir):
    """An impulse reaches exactly ``receptive_radius`` input pixels, which tiling relies on."""
    folder = ModelFolder.open(tiny_model_dir)
    network = load(folder, LoadSettings(tile=1024)).tiled.network
    base = np.full((1, 41, 41, 3), 0.5, np.float32)
    poked = base.copy()
    poked[0, 20, 20] = 1.0
    changed = np.abs(network(poked) - network(base))[0].max(axis=2) > 0
    rows = np.flatnonzero(changed.any(axis=1))
    reach = max(20 * 2 - rows.min(), rows.max() - (20 * 2 + 1))
    radius = folder.params.receptive_radius
    assert (radius - 1) * 2 <= reach <= radius * 2


@pytest.mark.slow
def test_building_the_network_writes_nothing_to_the_working_directory(tmp_path):
    code = (
        "from supersizeme.modelspec import RDNParams; from supersizeme.rdn import build_rdn; "
        "build_rdn(RDNParams(1, 1, 4, 4))"
    )
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_shipped_model_tiled_equals_whole_on_1024x768(shipped_model_dir):
    """Acceptance: tile sizes change nothing visible (within one grey level) on real weights."""
    folder = ModelFolder.open(shipped_model_dir)
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:768, 0:1024]
    waves = 0.5 + 0.3 * np.sin(x / 9.0) * np.cos(y / 13.0)
    image = np.clip(waves[..., None] + rng.normal(0, 0.05, (768, 1024, 3)), 0, 1)
    image = image.astype(np.float32)

    # In float32, the precision the one-level bound is for; bfloat16 is checked against
    # float32 by its own PSNR record (model.json's bfloat16_check).
    def levels(tile: int) -> np.ndarray:
        settings = LoadSettings(precision="float32", tile=tile, threads=cpu_count())
        upscaled = load(folder, settings)(image)
        return np.rint(np.clip(upscaled, 0, 1) * 255).astype(int)

    whole = levels(1024)
    for tile in (200, 384):
        difference = np.abs(levels(tile) - whole)
        assert difference.max() <= 1, (tile, difference.max())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("remove the record", "no OpenVINO network"),
        ("change the network", "does not match"),
        ("other weights", "derived from other weights"),
    ],
)
def test_the_derived_network_must_be_the_recorded_one(tiny_model_dir, tmp_path, damage, message):
    folder = copy_folder(tiny_model_dir, tmp_path)
    spec = json.loads((folder / "model.json").read_text())
    if damage == "remove the record":
        del spec["openvino"]
    elif damage == "change the network":
        with open(folder / "openvino" / "model.bin", "ab") as handle:
            handle.write(b"\0")
    else:
        spec["openvino"]["weights_sha256"] = "0" * 64
    (folder / "model.json").write_text(json.dumps(spec))
    slot = ModelSlot({CLEAN: ModelFolder.open(folder)}, LoadSettings(tile=32), CAP)
    with pytest.raises(ModelFolderError, match=message):
        slot.load()


GIB = 2**30


@pytest.fixture
def fake_speed(monkeypatch):
    """The worker's speed probes answer with the given seconds per megapixel (inference:
    first the warm-up's, then the retimings'; encode), and its resting memory is 1 GiB."""
    monkeypatch.setattr(upscaler_module, "RETIME_PAUSE_SECONDS", 0.0)
    monkeypatch.setattr(upscaler_module, "resident_bytes", lambda: GIB)

    def set_speed(inference: list[float], encode: float) -> None:
        timings = iter(inference)
        monkeypatch.setattr(upscaler_module, "measure_speed", lambda *_: next(timings))
        monkeypatch.setattr(upscaler_module, "encode_seconds_per_megapixel", lambda: encode)

    return set_speed


def loaded_slot(tiny_model_dir, limits: PixelCap, tile: int) -> ModelSlot:
    # A tile of its own for every test, so that no upscaler timed by another is cached.
    slot = ModelSlot({CLEAN: ModelFolder.open(tiny_model_dir)}, LoadSettings(tile=tile), limits)
    slot.load()
    return slot


def test_a_fast_worker_raises_its_cap_by_its_best_timing(tiny_model_dir, fake_speed, caplog):
    caplog.set_level("INFO", logger="supersizeme")
    # Timed at 1.6 s per MP, then at 1.3 once more: with 0.2 s of encode, 30 s serve 20 MP.
    fake_speed([1.6, 1.3], encode=0.2)
    slot = loaded_slot(tiny_model_dir, CAP, tile=41)
    assert slot.served.seconds_per_megapixel == 1.3
    assert (slot.max_pixels, slot.cap.decided_by) == (20_000_000, "speed")
    assert "pixel cap 20000000, decided by speed" in caplog.text


def test_a_slow_worker_keeps_the_cap_its_speed_allows(tiny_model_dir, fake_speed):
    fake_speed([7.3, 7.3], encode=0.2)
    slot = loaded_slot(tiny_model_dir, CAP, tile=42)
    assert (slot.max_pixels, slot.cap.decided_by) == (4_000_000, "speed")


def test_memory_decides_where_it_is_the_smaller_bound(tiny_model_dir, fake_speed):
    fake_speed([0.3], encode=0.1)
    limits = PixelCap(None, 60.0, memory_bytes=2 * GIB + capacity.HEADROOM_BYTES)
    slot = loaded_slot(tiny_model_dir, limits, tile=43)
    assert slot.cap.decided_by == "memory" and slot.memory.budget == GIB
    assert capacity.output_bytes(slot.max_pixels, 2) <= GIB


def test_an_explicit_cap_is_kept_with_a_warning(tiny_model_dir, fake_speed, caplog):
    fake_speed([20.0], encode=0.2)
    slot = loaded_slot(tiny_model_dir, PixelCap(3_000_000, 60.0, 64 * GIB), tile=44)
    assert (slot.max_pixels, slot.cap.decided_by) == (3_000_000, "SSM_MAX_PIXELS")
    assert "SSM_MAX_PIXELS=3000000 is kept as set" in caplog.text


def test_the_real_probes_time_the_worker(tiny_model_dir):
    slot = loaded_slot(tiny_model_dir, CAP, tile=45)
    assert slot.served.seconds_per_megapixel > 0 and slot.encode_seconds_per_megapixel > 0
    assert capacity.FLOOR_PIXELS <= slot.max_pixels <= capacity.CEILING_PIXELS


def test_a_worker_without_a_clean_model_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="clean"):
        ModelSlot({"photo": ModelFolder.open(tiny_model_dir)}, LoadSettings(tile=32), CAP)
