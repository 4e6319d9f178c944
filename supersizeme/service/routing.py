"""Which of a worker's models enlarges an upload.

A worker serves up to two networks of the same architecture: the clean model, trained on
bicubic downscales (the benchmarks' inputs, screenshots, renders, lossless PNGs), and the
photo model, trained on those downscales saved as JPEGs at qualities 30 to 95, which
removes the blocks and ringing that the clean model would sharpen. By default a JPEG
upload goes to the photo model and everything else to the clean one, except a JPEG whose
quantization table says it was saved at ``CLEAN_FROM_QUALITY`` or above: so little is
lost there that the clean model's sharper result wins (docs/model.md measures both). The
``model`` query parameter overrides the choice. At x4 only the first pass sees the JPEG's
artefacts: the second pass enlarges the first one's clean result, with the clean model.
"""

from __future__ import annotations

from collections.abc import Collection

CLEAN = "clean"
PHOTO = "photo"
AUTO = "auto"
# The values of the ``model`` query parameter, the default first.
MODEL_CHOICES = (AUTO, CLEAN, PHOTO)

# The upload formats the service decodes (images.sniff_format), and those whose uploads
# carry lossy compression artefacts.
UPLOAD_FORMATS = ("PNG", "JPEG")
COMPRESSED_FORMATS = frozenset({"JPEG"})
# The libjpeg quality (estimated from the file's tables) from which auto takes the clean model.
CLEAN_FROM_QUALITY = 96


def route(
    choice: str, source_format: str, available: Collection[str], jpeg_quality: int | None = None
) -> str:
    """The model that serves an upload of ``source_format`` when ``choice`` is asked.

    ``available`` are the models this worker holds (the clean one always); ``jpeg_quality``
    is a JPEG's estimated quality, where known. ``auto`` falls back to the clean model where
    no photo model is served; an explicit choice must be available (the API refuses an
    unavailable one before the body is read).
    """
    if choice == AUTO:
        compressed = source_format in COMPRESSED_FORMATS and (
            jpeg_quality is None or jpeg_quality < CLEAN_FROM_QUALITY
        )
        wanted = PHOTO if compressed else CLEAN
        return wanted if wanted in available else CLEAN
    if choice not in available:
        raise ValueError(f"model {choice!r} is not served here; available: {sorted(available)}")
    return choice


def routed_formats(role: str, available: Collection[str]) -> list[str]:
    """The upload formats that ``auto`` sends to the model ``role``, given ``available``."""
    return [name for name in UPLOAD_FORMATS if route(AUTO, name, available) == role]
