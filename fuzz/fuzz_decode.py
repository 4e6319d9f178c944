"""atheris target: untrusted bytes through the service's decode and validation path.

The contract under test is the one the HTTP layer relies on: for any bytes, ``decode``
with the default limits either returns an image or raises ``Refused`` (a 4xx for the
client). Any other exception is a 500 waiting to happen, so the fuzzer reports it. A
decoded image also goes through ``check_encodable`` and ``encode`` in every output
format at its own size, so that every mode, bit depth, alpha and ICC profile that
decode lets through can be written back (or is refused with ``Refused``).

Run it through ``python -m fuzz.run`` (seeds, time bound, report); by hand, from the
repository root: ``python -m fuzz.fuzz_decode -max_total_time=60 fuzz/work/corpus
fuzz/work/seeds``.
"""

from __future__ import annotations

import sys

import atheris

# Instrument Pillow's Python plugins (chunk and marker parsing live there) together with
# our own module, so that coverage guides the fuzzer through both.
with atheris.instrument_imports(include=["PIL", "supersizeme"]):
    from PIL import Image

    from supersizeme.service.errors import Refused
    from supersizeme.service.images import FORMATS, Limits, check_encodable, decode, encode

    # Pillow imports its format plugins (and TiffImagePlugin, which parses EXIF) on first
    # use; importing them all here puts them under instrumentation too.
    Image.init()

LIMITS = Limits()
# Encoding a decoded image costs time linear in its pixels; past this size a single
# input would slow the run for little new coverage, so only decoding is checked.
MAX_ENCODED_PIXELS = 512 * 512


def test_one_input(data: bytes) -> None:
    try:
        image = decode(data, LIMITS)
    except Refused:
        return
    if image.width * image.height > MAX_ENCODED_PIXELS:
        return
    for image_format in FORMATS:
        try:
            check_encodable(image, 1, image_format)
        except Refused:
            continue
        encode(
            image.rgb,
            image.alpha,
            grayscale=image.grayscale,
            sixteen_bit=image.sixteen_bit,
            icc_profile=image.icc_profile,
            image_format=image_format,
        )


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
