"""Which model enlarges an upload (service/routing.py)."""

from __future__ import annotations

import pytest

from supersizeme.service.routing import (
    AUTO,
    CLEAN,
    CLEAN_FROM_QUALITY,
    MODEL_CHOICES,
    PHOTO,
    PHOTO_FROM_QUALITY,
    PHOTO_LOW,
    UPLOAD_FORMATS,
    auto_routes,
    route,
)

ALL = (CLEAN, PHOTO, PHOTO_LOW)
NO_LOW = (CLEAN, PHOTO)


@pytest.mark.parametrize(("source_format", "expected"), [("JPEG", PHOTO), ("PNG", CLEAN)])
def test_auto_sends_jpeg_to_the_photo_model_and_png_to_the_clean_one(source_format, expected):
    assert route(AUTO, source_format, ALL) == expected


@pytest.mark.parametrize("source_format", UPLOAD_FORMATS)
@pytest.mark.parametrize("quality", [None, 10, 50, 80, 99])
def test_auto_without_a_photo_model_uses_the_clean_one(source_format, quality):
    assert route(AUTO, source_format, (CLEAN,), quality) == CLEAN


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (1, PHOTO_LOW),
        (30, PHOTO_LOW),
        (PHOTO_FROM_QUALITY - 1, PHOTO_LOW),
        (PHOTO_FROM_QUALITY, PHOTO),
        (90, PHOTO),
        (CLEAN_FROM_QUALITY - 1, PHOTO),
        (CLEAN_FROM_QUALITY, CLEAN),
        (100, CLEAN),
        (None, PHOTO),  # no table to judge by: taken for a typical photo
    ],
)
def test_auto_sends_a_jpeg_to_the_model_of_its_quality_band(quality, expected):
    assert route(AUTO, "JPEG", ALL, quality) == expected


def test_a_band_without_its_model_falls_back_to_the_band_above():
    assert route(AUTO, "JPEG", NO_LOW, 30) == PHOTO
    assert route(AUTO, "JPEG", NO_LOW, CLEAN_FROM_QUALITY) == CLEAN
    # photo-low beside no photo model: the photo band goes to the clean model.
    assert route(AUTO, "JPEG", (CLEAN, PHOTO_LOW), 80) == CLEAN
    assert route(AUTO, "JPEG", (CLEAN, PHOTO_LOW), 30) == PHOTO_LOW


@pytest.mark.parametrize("choice", ALL)
@pytest.mark.parametrize("source_format", UPLOAD_FORMATS)
@pytest.mark.parametrize("quality", [None, 30, 90, 100])
def test_an_explicit_choice_wins_over_the_format_and_quality(choice, source_format, quality):
    assert route(choice, source_format, ALL, quality) == choice


@pytest.mark.parametrize("choice", [PHOTO, PHOTO_LOW])
def test_an_unavailable_choice_is_an_error_not_a_silent_fallback(choice):
    with pytest.raises(ValueError, match=choice):
        route(choice, "JPEG", (CLEAN,))


def test_the_default_choice_is_auto():
    assert MODEL_CHOICES[0] == AUTO and set(MODEL_CHOICES) == {AUTO, *ALL}


def test_auto_routes_say_which_uploads_each_model_gets():
    assert auto_routes(CLEAN, ALL) == {
        "formats": ["PNG", "JPEG"],
        "jpeg_qualities": [CLEAN_FROM_QUALITY, 100],
    }
    assert auto_routes(PHOTO, ALL) == {
        "formats": ["JPEG"],
        "jpeg_qualities": [PHOTO_FROM_QUALITY, CLEAN_FROM_QUALITY - 1],
    }
    assert auto_routes(PHOTO_LOW, ALL) == {
        "formats": ["JPEG"],
        "jpeg_qualities": [1, PHOTO_FROM_QUALITY - 1],
    }
    assert auto_routes(PHOTO, NO_LOW)["jpeg_qualities"] == [1, CLEAN_FROM_QUALITY - 1]
    assert auto_routes(CLEAN, (CLEAN,)) == {"formats": ["PNG", "JPEG"], "jpeg_qualities": [1, 100]}
    assert auto_routes(PHOTO_LOW, NO_LOW) == {"formats": [], "jpeg_qualities": None}
