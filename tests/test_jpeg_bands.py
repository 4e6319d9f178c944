"""The band study's report (benchmarks/jpeg_bands.py), on made-up gains."""

from __future__ import annotations

from benchmarks.jpeg_bands import report


def gains(clean: float, photo: float, low: float) -> dict:
    return {
        role: {"psnr": 30.0 + gain, "bicubic": 30.0, "gain": gain}
        for role, gain in (("clean", clean), ("photo", photo), ("photo-low", low))
    }


def test_the_report_names_the_best_model_and_autos_choice_per_quality():
    text = report(
        {98: gains(2.0, 1.5, 0.5), 80: gains(0.4, 1.2, 1.0), 40: gains(-0.5, 0.6, 0.9)},
        ["set14"],
        14,
        "python -m benchmarks.jpeg_bands --sets set14",
    )
    lines = text.splitlines()
    assert "Machine: " in text and "14 images (set14)" in text
    assert lines[-3] == "| 98 | 30.00 | +2.00 | +1.50 | +0.50 | clean | clean |"
    assert lines[-2] == "| 80 | 30.00 | +0.40 | +1.20 | +1.00 | photo | photo |"
    assert lines[-1] == "| 40 | 30.00 | -0.50 | +0.60 | +0.90 | photo-low | photo-low |"
