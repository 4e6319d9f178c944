"""From a (tiny) training checkpoint to a measured, documented model folder."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supersizeme.machine import cpu_flags, hardware
from supersizeme.modelspec import (
    OPENVINO_DIR,
    OPENVINO_FILES,
    SPEC_FILE,
    WEIGHTS_FILE,
    ModelFolder,
    sha256_of,
)
from supersizeme.toolchain import export
from supersizeme.toolchain.train import TrainConfig, parse_args, read_checkpoint, train

pytestmark = pytest.mark.training  # trains and exports a checkpoint


def random_pngs(folder: Path, count: int, size: tuple[int, int], seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, TrainConfig]:
    root = tmp_path_factory.mktemp("train")
    config = TrainConfig(
        C=1,
        D=1,
        G=4,
        G0=4,
        steps=3,
        batch=2,
        patch=16,
        warmup=1,
        precision="float32",
        threads=1,
        data=str(random_pngs(root / "data", 3, (40, 44), seed=1)),
        out=str(root / "run"),
    )
    return train(config) / "ckpt.npz", config


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> tuple[ModelFolder, Path]:
    bench = random_pngs(tmp_path_factory.mktemp("bench") / "synth", 2, (30, 26), seed=2)
    out = tmp_path_factory.mktemp("models") / "tiny"
    folder = export.export(
        checkpoint[0], out, [bench], data_name="random test images", tile=16, threads=1
    )
    return folder, bench


def test_folder_files_and_sha(exported):
    folder, _ = exported
    assert {p.name for p in folder.path.iterdir()} == {
        WEIGHTS_FILE,
        SPEC_FILE,
        export.CARD_FILE,
        OPENVINO_DIR,
    }
    spec = json.loads((folder.path / SPEC_FILE).read_text())
    assert spec["weights_sha256"] == sha256_of(folder.path / WEIGHTS_FILE)
    assert spec["openvino"]["weights_sha256"] == spec["weights_sha256"]
    for name in OPENVINO_FILES:
        path = folder.path / OPENVINO_DIR / name
        assert spec["openvino"]["sha256"][name] == sha256_of(path)
    assert folder.openvino_model() == folder.path / OPENVINO_DIR / "model.xml"
    assert spec["name"] == "rdn-C1-D1-G4-G04-x2" and spec["C"] == 1 and spec["G0"] == 4


def test_weights_are_the_checkpoints(exported, checkpoint):
    from supersizeme.rdn import load_rdn, named_weights

    _, weights, _ = read_checkpoint(checkpoint[0])
    loaded = named_weights(load_rdn(exported[0]))
    assert loaded.keys() == weights.keys()
    assert all(np.array_equal(loaded[name], weights[name]) for name in weights)


def test_training_record(exported):
    training = exported[0].spec["training"]
    assert training["steps"] == 3 and training["batch"] == 2 and training["patch_lr"] == 16
    assert training["data"] == "random test images" and training["precision"] == "float32"
    assert "cores" in training["hardware"]


def test_evaluation_is_stored_and_on_the_card(exported):
    folder, bench = exported
    rows = folder.spec["evaluation"][bench.name]
    assert set(rows) == {"bicubic", "tiny"}
    card = (folder.path / export.CARD_FILE).read_text()
    for entry in rows.values():
        assert entry["images"] == 2 and np.isfinite(entry["psnr"])
        assert f"{entry['psnr']:.2f} / {entry['ssim']:.4f}" in card
    assert folder.spec["evaluation_setup"]["tile"] == 16
    assert (
        "python -m supersizeme.toolchain.train" in card
        and "python -m supersizeme.toolchain.export" in card
    )
    assert "1802.08797" in card and "check the terms" in card


def test_train_command_reproduces_the_config(checkpoint):
    _, config = checkpoint
    command = export.train_command(dataclasses.asdict(config))
    parsed = parse_args(shlex.split(command)[3:])
    ignored = export._BOOKKEEPING
    assert {k: v for k, v in dataclasses.asdict(parsed).items() if k not in ignored} == {
        k: v for k, v in dataclasses.asdict(config).items() if k not in ignored
    }


def test_card_names_the_licences_of_the_291_images(exported):
    spec = {**exported[0].spec, "training": {"data": export.DEFAULT_DATA_NAME}}
    card = export.render_card(spec, {"train": "t", "export": "e", "evaluate": "v"})
    assert "Yang" in card and "BSDS300" in card and "non-commercial" in card


def test_deriving_again_writes_the_same_network(exported, tmp_path):
    import shutil

    copy = tmp_path / "again"
    shutil.copytree(exported[0].path, copy)
    again = export.derive(copy)
    assert again.spec["openvino"]["sha256"] == exported[0].spec["openvino"]["sha256"]


def test_the_bfloat16_check_runs_openvino_where_bfloat16_is_native(host):
    expected = "openvino" if host.native_bfloat16 else "tensorflow"
    assert export.bfloat16_check_runtime(cpu_flags()) == expected


def test_bfloat16_check_is_recorded_for_set5_and_set14(exported, tmp_path):
    import shutil

    copy = tmp_path / "checked"
    shutil.copytree(exported[0].path, copy)
    sets = [random_pngs(tmp_path / name, 2, (30, 26), seed=3) for name in ("set5", "set14")]
    record = export.check_bfloat16(ModelFolder.open(copy), sets, tile=16, threads=1)
    assert ModelFolder.open(copy).spec["bfloat16_check"] == record
    assert record["hardware"] == hardware()
    assert record["runtime"].startswith(export.bfloat16_check_runtime(cpu_flags()))
    for name in ("set5", "set14"):
        psnr = record["psnr"][name]
        assert record["loss_db"][name] == round(psnr["float32"] - psnr["bfloat16"], 4)
        # bfloat16 keeps 8 bits of mantissa: close to float32, but not the same numbers.
        assert psnr["float32"] != psnr["bfloat16"]
        assert abs(record["loss_db"][name]) < 1.0
    assert export.check_bfloat16(ModelFolder.open(copy), sets[:1]) is None


def test_a_jpeg_model_is_measured_on_jpeg_inputs_and_its_card_says_so(checkpoint, tmp_path):
    state, _, _ = read_checkpoint(checkpoint[0])
    bench = random_pngs(tmp_path / "bench" / "synth", 2, (30, 26), seed=3)
    folder = export.export(
        checkpoint[0], tmp_path / "tiny-jpeg", [bench], tile=16, threads=1, jpeg_qualities=[75]
    )
    rows = folder.spec["evaluation_jpeg"]["75"][bench.name]
    assert set(rows) == {"bicubic", "tiny-jpeg"}
    # The bicubic row enlarges the decoded JPEG: lower than on the PNG input.
    assert rows["bicubic"]["psnr"] < folder.spec["evaluation"][bench.name]["bicubic"]["psnr"]
    card = (folder.path / export.CARD_FILE).read_text()
    assert "| JPEG q75 |" in card and "--jpeg 75" in card

    # The card follows the degradation the checkpoint was trained on.
    photo = {**folder.spec, "training": {**folder.spec["training"], "degradation": "jpeg"}}
    commands = {"train": "t", "export": "e", "evaluate": "v"}
    assert "saved as a baseline JPEG" in export.render_card(photo, commands)
    assert "JPEG-compressed photographs" in export.render_card(photo, commands)
    assert "It learned one degradation" in card
    assert folder.spec["training"]["degradation"] == state["config"]["degradation"] == "bicubic"
