"""Which of a worker's models enlarges an upload.

A worker serves up to three networks of the same architecture: the clean model, trained on
bicubic downscales (the benchmarks' inputs, screenshots, renders, lossless PNGs), and two
photo models, trained on those downscales saved as JPEGs: ``photo`` on qualities 75 to 95
(most cameras' and web photos'), ``photo-low`` on 30 to 74 (heavily compressed files). A
network trained for heavy blocking smooths a light JPEG's detail away, and one trained for
light artefacts leaves heavy blocks in place, hence one per band. By default a PNG goes to
the clean model and a JPEG by the quality its quantization table says (``JPEG_BANDS``):
from ``CLEAN_FROM_QUALITY`` so little is lost that the clean model's sharper result wins
(docs/model.md measures every model at every quality). A band whose model is not served
falls back to the next model up (``FALLBACK``). The ``model`` query parameter names one
model outright. At x4 only the first pass sees the JPEG's artefacts: the second pass
enlarges the first one's clean result, with the clean model.
"""

from __future__ import annotations

from collections.abc import Collection

CLEAN = "clean"
PHOTO = "photo"
PHOTO_LOW = "photo-low"
AUTO = "auto"
# The values of the ``model`` query parameter, the default first.
MODEL_CHOICES = (AUTO, CLEAN, PHOTO, PHOTO_LOW)

# The upload formats the service decodes (images.sniff_format), and those whose uploads
# carry lossy compression artefacts.
UPLOAD_FORMATS = ("PNG", "JPEG")
COMPRESSED_FORMATS = frozenset({"JPEG"})
# The libjpeg quality (estimated from the file's tables) from which auto takes the clean
# model, and from which it takes the photo model rather than photo-low.
CLEAN_FROM_QUALITY = 96
PHOTO_FROM_QUALITY = 75
# Auto's model for a JPEG: the first whose lowest quality the file's estimate reaches.
JPEG_BANDS = ((CLEAN_FROM_QUALITY, CLEAN), (PHOTO_FROM_QUALITY, PHOTO), (1, PHOTO_LOW))
# A JPEG of unknown quality (no table to judge by) is taken for a typical photo.
UNKNOWN_QUALITY_MODEL = PHOTO
# Where auto goes when a band's model is not served: the model of the band above.
FALLBACK = {PHOTO_LOW: PHOTO, PHOTO: CLEAN}
QUALITIES = range(1, 101)


def route(
    choice: str, source_format: str, available: Collection[str], jpeg_quality: int | None = None
) -> str:
    """The model that serves an upload of ``source_format`` when ``choice`` is asked.

    ``available`` are the models this worker holds (the clean one always); ``jpeg_quality``
    is a JPEG's estimated quality, where known. ``auto`` falls back up the bands where a
    model is not served; an explicit choice must be available (the API refuses an
    unavailable one before the body is read).
    """
    if choice == AUTO:
        wanted = auto_choice(source_format, jpeg_quality)
        while wanted not in available:
            wanted = FALLBACK[wanted]
        return wanted
    if choice not in available:
        raise ValueError(f"model {choice!r} is not served here; available: {sorted(available)}")
    return choice


def auto_choice(source_format: str, jpeg_quality: int | None) -> str:
    """Auto's model for an upload when every model is served."""
    if source_format not in COMPRESSED_FORMATS:
        return CLEAN
    if jpeg_quality is None:
        return UNKNOWN_QUALITY_MODEL
    return next(role for lowest, role in JPEG_BANDS if jpeg_quality >= lowest)


def auto_routes(role: str, available: Collection[str]) -> dict[str, object]:
    """Which uploads ``auto`` sends to the model ``role``, given ``available``.

    ``formats``: the upload formats of which some go to it; ``jpeg_qualities``: the range
    of estimated JPEG qualities it gets (``[lowest, highest]``), or None for none.
    """
    qualities = [q for q in QUALITIES if route(AUTO, "JPEG", available, q) == role]
    formats = [
        name
        for name in UPLOAD_FORMATS
        if (qualities if name in COMPRESSED_FORMATS else route(AUTO, name, available) == role)
    ]
    span = [qualities[0], qualities[-1]] if qualities else None
    return {"formats": formats, "jpeg_qualities": span}
