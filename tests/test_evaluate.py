"""The benchmark protocol, the bicubic baseline and the served-path evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supersizeme.service.config import REPO_ROOT
from supersizeme.toolchain import evaluate
from supersizeme.toolchain.quality import y_psnr_ssim

SET5 = REPO_ROOT.parent / "shared" / "datasets" / "benchmark" / "set5"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """Three small images: odd sizes (cropping matters) and one grey (mode L)."""
    folder = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:37, 0:42]
    for i in range(2):
        pattern = 120 + 90 * np.sin(xx / (3 + i) + yy / 5)[..., None] * np.array([1, 0.6, 0.3])
        pixels = np.clip(pattern + rng.normal(0, 10, pattern.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
    grey = np.clip(128 + 100 * np.cos(xx / 4) * np.sin(yy / 6), 0, 255).astype(np.uint8)
    Image.fromarray(grey[:33, :29]).save(folder / "grey.png")
    return folder


def direct_bicubic_psnr_ssim(path: Path, scale: int) -> tuple[float, float]:
    """The protocol written out with Pillow alone, independent of the module under test."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    hr = rgb.crop((0, 0, width - width % scale, height - height % scale))
    lr = hr.resize((hr.width // scale, hr.height // scale), Image.Resampling.BICUBIC)
    sr = lr.resize(hr.size, Image.Resampling.BICUBIC)
    return y_psnr_ssim(np.asarray(hr), np.asarray(sr), border=scale)


def test_bicubic_row_equals_direct_computation(bench):
    result = evaluate.evaluate_folder(evaluate.bicubic_png(2), bench, 2)
    direct = np.array([direct_bicubic_psnr_ssim(p, 2) for p in sorted(bench.iterdir())])
    assert result["images"] == 3
    assert result["psnr"] == pytest.approx(direct[:, 0].mean(), abs=1e-9)
    assert result["ssim"] == pytest.approx(direct[:, 1].mean(), abs=1e-9)
    assert result["megapixels"] == pytest.approx((18 * 21 * 2 + 16 * 14) / 1e6)
    assert result["seconds_per_megapixel"] > 0


def test_grey_input_stays_grey_and_matches_the_rgb_protocol(bench):
    pair = evaluate.load_pair(bench / "grey.png", 2)
    assert pair.lr.mode == "L" and pair.lr.size == (14, 16)
    assert pair.hr.shape == (32, 28, 3)
    with Image.open(bench / "grey.png") as image:
        hr = image.convert("RGB").crop((0, 0, 28, 32))
    rgb_lr = hr.resize((14, 16), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(pair.lr), np.asarray(rgb_lr)[..., 0])


def test_served_path_on_the_tiny_model(tiny_model_dir, bench):
    # A 16 px tile splits every image into several tiles, so tiling is on the path too.
    upscale, scale = evaluate.load_served(tiny_model_dir, tile=16, threads=1)
    assert scale == 2
    result = evaluate.evaluate_folder(upscale, bench, scale)
    assert result["images"] == 3
    assert math.isfinite(result["psnr"]) and 0 < result["ssim"] < 1
    assert math.isfinite(result["seconds_per_megapixel"]) and result["seconds_per_megapixel"] > 0


def test_markdown_table_format():
    entry = {"psnr": 37.123, "ssim": 0.95712, "images": 5, "seconds": 2.0, "megapixels": 1.0}
    results = {
        "set5": {"bicubic": {**entry, "psnr": 33.666}, "m": entry},
        "set14": {"bicubic": {**entry, "seconds": 1.0, "megapixels": 3.0}},
    }
    assert evaluate.markdown_table(results) == (
        "| model | Set5 PSNR / SSIM | Set14 PSNR / SSIM | s / input MP |\n"
        "| --- | --- | --- | --- |\n"
        "| bicubic | 33.67 / 0.9571 | 37.12 / 0.9571 | 0.750 |\n"
        "| m | 37.12 / 0.9571 | – | 2.000 |\n"
    )


def test_cli_writes_json_and_prints_the_table(tiny_model_dir, bench, tmp_path, capsys):
    out = tmp_path / "eval.json"
    evaluate.main(
        [
            "--model",
            str(tiny_model_dir),
            "--bicubic",
            "--sets",
            str(bench),
            "--json",
            str(out),
            "--tile",
            "16",
            "--threads",
            "1",
        ]
    )
    results = json.loads(out.read_text())
    rows = results[bench.name]
    assert list(rows) == ["bicubic", tiny_model_dir.name]
    assert all(rows[r]["images"] == 3 for r in rows)
    table = capsys.readouterr().out
    assert f"| {tiny_model_dir.name} | {evaluate.format_cell(rows[tiny_model_dir.name])}" in table


@pytest.mark.skipif(not SET5.is_dir(), reason="benchmark images not present")
def test_set5_bicubic_matches_the_documented_value():
    # Pillow's bicubic on Set5 measures 33.67 dB with this protocol (datasets README).
    assert evaluate.evaluate_folder(evaluate.bicubic_png(2), SET5, 2)["psnr"] == pytest.approx(
        33.67, abs=0.005
    )
