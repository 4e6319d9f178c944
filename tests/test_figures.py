"""The architecture diagram and the before/after figure, on the tiny model."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from supersizeme.modelspec import RDNParams
from supersizeme.toolchain import figures

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg.encode())
    assert root.tag == f"{SVG}svg"
    return [node.text or "" for node in root.iter(f"{SVG}text")]


@pytest.mark.parametrize(
    ("params", "blocks"),
    [
        (RDNParams(C=1, D=1, G=4, G0=4), ["RDB 1"]),
        (RDNParams(C=6, D=20, G=64, G0=64), ["RDB 1", "RDB 2", "RDB 20"]),
    ],
)
def test_architecture_svg_is_labelled_with_the_parameters(params, blocks):
    texts = svg_texts(figures.architecture_svg(params, parameter_count=1234))
    assert [t for t in texts if t.startswith("RDB ")] == blocks
    assert sum(t.startswith("conv ") and t[5:].isdigit() for t in texts) == params.C
    header = " ".join(texts[:2])
    for label in (f"C = {params.C}", f"D = {params.D}", f"G = {params.G}", f"G0 = {params.G0}"):
        assert label in header
    assert "1,234 parameters" in header


def test_busiest_crop_finds_the_texture():
    rng = np.random.default_rng(0)
    image = np.full((64, 96, 3), 120, np.uint8)
    image[:, 64:] = rng.integers(0, 256, (64, 32, 3))
    crop = figures.busiest_crop(image, 32, 2)
    assert crop.size == 32 and crop.x >= 56 and crop.x % 2 == crop.y % 2 == 0


def test_cli_writes_both_figures(tiny_model_dir, tmp_path):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:50, 0:61]
    pixels = 128 + 100 * np.sin(xx / 3)[..., None] * np.cos(yy / 5)[..., None]
    source = tmp_path / "photo.png"
    Image.fromarray(np.clip(pixels + rng.normal(0, 8, (50, 61, 3)), 0, 255).astype(np.uint8)).save(
        source
    )
    out = tmp_path / "assets"
    svg_path, png_path = figures.main(
        [
            "--model",
            str(tiny_model_dir),
            "--image",
            str(source),
            "--out",
            str(out),
            "--zoom",
            "2",
            "--tile",
            "16",
            "--threads",
            "1",
        ]
    )
    assert svg_path == out / figures.ARCHITECTURE_FILE
    assert "G0 = 4" in " ".join(svg_texts(svg_path.read_text()))
    with Image.open(png_path) as figure:
        figure.load()
        # Four panels of the default 96 px crop, clipped to the 50 px image, at zoom 2.
        assert figure.format == "PNG" and figure.width > 4 * 48 * 2 and figure.height > 48 * 2


def test_crop_outside_the_image_is_refused(tmp_path):
    source = tmp_path / "small.png"
    Image.new("RGB", (20, 20), "grey").save(source)
    with pytest.raises(ValueError, match="does not fit"):
        figures.before_after(figures.bicubic_png(2), source, 2, figures.Crop(10, 10, 16))
