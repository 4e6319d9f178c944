"""Which model enlarges an upload (service/routing.py)."""

from __future__ import annotations

import pytest

from supersizeme.service.routing import (
    AUTO,
    CLEAN,
    CLEAN_FROM_QUALITY,
    MODEL_CHOICES,
    PHOTO,
    UPLOAD_FORMATS,
    route,
    routed_formats,
)

BOTH = (CLEAN, PHOTO)


@pytest.mark.parametrize(("source_format", "expected"), [("JPEG", PHOTO), ("PNG", CLEAN)])
def test_auto_sends_jpeg_to_the_photo_model_and_png_to_the_clean_one(source_format, expected):
    assert route(AUTO, source_format, BOTH) == expected


@pytest.mark.parametrize("source_format", UPLOAD_FORMATS)
def test_auto_without_a_photo_model_uses_the_clean_one(source_format):
    assert route(AUTO, source_format, (CLEAN,)) == CLEAN


@pytest.mark.parametrize("choice", [CLEAN, PHOTO])
@pytest.mark.parametrize("source_format", UPLOAD_FORMATS)
def test_an_explicit_choice_wins_over_the_format(choice, source_format):
    assert route(choice, source_format, BOTH) == choice


def test_auto_sends_a_jpeg_of_a_very_high_quality_to_the_clean_model():
    assert route(AUTO, "JPEG", BOTH, CLEAN_FROM_QUALITY - 1) == PHOTO
    assert route(AUTO, "JPEG", BOTH, CLEAN_FROM_QUALITY) == CLEAN
    assert route(AUTO, "JPEG", BOTH, None) == PHOTO  # no table to judge by
    assert route(PHOTO, "JPEG", BOTH, 100) == PHOTO  # an explicit choice still wins


def test_an_unavailable_choice_is_an_error_not_a_silent_fallback():
    with pytest.raises(ValueError, match="photo"):
        route(PHOTO, "JPEG", (CLEAN,))


def test_the_default_choice_is_auto():
    assert MODEL_CHOICES[0] == AUTO and set(MODEL_CHOICES) == {AUTO, CLEAN, PHOTO}


def test_routed_formats_say_which_uploads_each_model_gets():
    assert routed_formats(CLEAN, BOTH) == ["PNG"]
    assert routed_formats(PHOTO, BOTH) == ["JPEG"]
    assert routed_formats(CLEAN, (CLEAN,)) == ["PNG", "JPEG"]
