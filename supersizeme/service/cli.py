"""Batch upscaling from the command line: the served path, without HTTP.

    python -m supersizeme upscale photos/ extra.jpg --out big/ --scale 4 --format webp

Each file goes through the same validation, routing, networks and encoder as a POST
to the service (``pipeline``, ``routing``, the models loaded by
``upscaler.open_upscaler``), without the request deadline: by default JPEG files go to
a photo model by their quality and the others to the clean one, and ``--use-model``
overrides that as the ``model`` query parameter does. A file that cannot be upscaled is
reported and skipped; the exit status says whether any was: 0 all written, 1 some failed,
2 nothing tried (bad options or a model that does not load), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from supersizeme.machine import cpu_count
from supersizeme.service import config as settings
from supersizeme.service.capacity import CEILING_PIXELS
from supersizeme.service.errors import Refused
from supersizeme.service.images import FORMATS, Limits
from supersizeme.service.pipeline import (
    SCALES,
    Output,
    Timings,
    Upscale,
    decode_for,
    upscale_decoded,
)
from supersizeme.service.routing import (
    AUTO,
    CLEAN,
    CLEAN_FROM_QUALITY,
    MODEL_CHOICES,
    PHOTO_FROM_QUALITY,
    route,
)
from supersizeme.service.runtime import PRECISIONS, RUNTIMES

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class Job:
    source: Path  # as the user named it (or under a folder the user named)
    target: Path


@dataclass(frozen=True)
class Failure:
    path: Path
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.code}: {self.message}"


def build_parser() -> argparse.ArgumentParser:
    """Options default to the service's settings (service/config.py, SSM_* variables)."""
    defaults = settings.from_environment()
    parser = argparse.ArgumentParser(
        prog="python -m supersizeme",
        description="Super Size Me: enlarge PNG and JPEG images with the service's RDN.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    upscale = commands.add_parser(
        "upscale",
        help="upscale image files and folders (folders are walked recursively)",
        description="Upscale image files and folders. Results are written under --out as "
        "<name>-x<scale>.<format>, keeping each folder's layout; hidden files are skipped.",
    )
    upscale.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or folder")
    upscale.add_argument("--out", required=True, type=Path, help="folder for the results")
    upscale.add_argument("--scale", type=int, choices=SCALES, default=SCALES[0])
    upscale.add_argument("--format", choices=FORMATS, default=FORMATS[0], dest="image_format")
    upscale.add_argument(
        "--model",
        type=Path,
        default=Path(defaults["MODEL_DIR"]),
        help="the clean model's folder (default: %(default)s)",
    )
    upscale.add_argument(
        "--photo-model",
        type=optional_folder,
        default=defaults["PHOTO_MODEL_DIR"],
        help="the photo model's folder, for JPEG files of quality "
        f"{PHOTO_FROM_QUALITY} to {CLEAN_FROM_QUALITY - 1}, or 'none' (then no photo "
        "model at all; default: %(default)s)",
    )
    upscale.add_argument(
        "--photo-low-model",
        type=optional_folder,
        default=defaults["PHOTO_LOW_MODEL_DIR"],
        help=f"the photo-low model's folder, for JPEG files below quality {PHOTO_FROM_QUALITY}, "
        "or 'none' (then the photo model's; default: %(default)s)",
    )
    upscale.add_argument(
        "--use-model",
        choices=MODEL_CHOICES,
        default=MODEL_CHOICES[0],
        help="auto: a photo model for JPEG files by their quality, the clean one for the "
        f"others and for JPEGs of quality {CLEAN_FROM_QUALITY} or more (default)",
    )
    upscale.add_argument("--runtime", choices=RUNTIMES, default=defaults["RUNTIME"])
    upscale.add_argument("--precision", choices=PRECISIONS, default=defaults["PRECISION"])
    upscale.add_argument(
        "--max-pixels",
        type=positive_int,
        default=defaults["MAX_PIXELS"] or CEILING_PIXELS,
        help="input pixel cap at x2 (default: SSM_MAX_PIXELS where set, else what a 5 MB "
        "upload carries, %(default)s: files have no deadline); x4 allows a fifth of it",
    )
    # Not options: the server's other settings, so that a file is judged as a POST is.
    upscale.set_defaults(min_side=defaults["MIN_SIDE"], tile=defaults["TILE"])
    return parser


def optional_folder(text: str) -> Path | None:
    return None if text.strip().lower() == settings.NO_MODEL else Path(text)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def files_under(root: Path, skip: Path, failures: list[Failure]) -> Iterator[Path]:
    """Every non-hidden file below ``root``, in a stable order, except under ``skip``."""

    def unreadable(error: OSError) -> None:
        failures.append(Failure(Path(error.filename or root), "unreadable", error.strerror or ""))

    for folder, subfolders, files in os.walk(root, onerror=unreadable):
        here = Path(folder)
        # Pruned in place so that os.walk does not descend into them; a results folder
        # inside the input would otherwise be read back as input on the next run.
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not is_hidden(here / name) and (here / name).resolve() != skip
        )
        yield from (here / name for name in sorted(files) if not is_hidden(here / name))


def plan(paths: Iterable[Path], out: Path, output: Output) -> tuple[list[Job], list[Failure]]:
    """What to write where, and the paths that cannot even be tried."""
    jobs: list[Job] = []
    failures: list[Failure] = []
    for path in paths:
        if path.is_dir():
            for source in files_under(path, out.resolve(), failures):
                relative = source.relative_to(path).parent
                target = out / relative / output.file_name(source.stem)
                jobs.append(Job(source, target))
        elif path.is_file():
            jobs.append(Job(path, out / output.file_name(path.stem)))
        elif path.exists():
            kind = kind_of(path.stat().st_mode)
            failures.append(Failure(path, "not_a_file", f"{kind}, neither a file nor a folder"))
        else:
            failures.append(Failure(path, "not_found", "no such file or folder"))
    inputs = {job.source.resolve() for job in jobs}
    claimed: dict[Path, Path] = {}
    seen: set[Path] = set()
    kept = []
    for job in jobs:
        target = job.target.resolve()
        if job.source.resolve() in seen:
            continue  # named twice, say as a file and inside a folder: done once
        seen.add(job.source.resolve())
        if target in inputs:
            failures.append(
                Failure(job.source, "would_overwrite_input", f"{job.target} is one of the inputs")
            )
        elif target in claimed:
            failures.append(
                Failure(
                    job.source,
                    "output_conflict",
                    f"{job.target} is already the output of {claimed[target]}",
                )
            )
        else:
            claimed[target] = job.source
            kept.append(job)
    return kept, failures


# The loaded models by role (routing.CLEAN always, the photo models where they are used).
Models = dict[str, Upscale]


def attempt(
    job: Job, models: Models, limits: Limits, output: Output, choice: str
) -> Failure | None:
    """Upscale one file; what went wrong, if anything, instead of an exception.

    A Refused, whether from the served path or about the file itself, keeps its code.
    """
    try:
        upscale_file(job, models, limits, output, choice)
    except Refused as exc:
        return Failure(job.source, exc.code, exc.message)
    except Exception as exc:
        # A bug or a decoder surprise in one file must not end the whole batch.
        return Failure(job.source, "internal_error", f"{type(exc).__name__}: {exc}")
    return None


def upscale_file(job: Job, models: Models, limits: Limits, output: Output, choice: str) -> None:
    data = read_regular_file(job.source)
    if not data:
        raise Refused("empty_file", "the file is empty")
    timings = Timings()
    image = decode_for(data, limits, output, timings)
    first = models[route(choice, image.source_format, models, image.jpeg_quality)]
    try:
        encoded = upscale_decoded(image, models[CLEAN], output, None, timings, first)
    except MemoryError:
        raise Refused("out_of_memory", "not enough memory for this image") from None
    try:
        write_whole(job.target, encoded)
    except OSError as exc:
        raise Refused("write_failed", exc.strerror or type(exc).__name__) from None


# What a path is when it is not a regular file, for the failure line.
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    return next((name for is_kind, name in _KINDS if is_kind(mode)), "a special file")


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file (or a link to one).

    A FIFO would block the run until something writes to it, and a device such as
    /dev/zero never ends. The check is made on the opened file, so that what is read is
    what was checked; O_NONBLOCK lets a FIFO with no writer be opened to be refused.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise Refused("unreadable", exc.strerror or type(exc).__name__) from None
    with os.fdopen(descriptor, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise Refused("not_a_file", f"{kind_of(mode)}, not a regular file")
        try:
            return file.read()
        except OSError as exc:
            raise Refused("unreadable", exc.strerror or type(exc).__name__) from None


def write_whole(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` entirely or not at all, and through no symbolic link.

    The bytes go to a new hidden file, renamed into place once complete: an interrupted
    run leaves no half-written result that looks finished, and a rerun does not read it
    as input. The temporary name is unguessable and created with O_EXCL, which fails on
    any existing name, a planted symbolic link included, rather than write where it
    points. The rename replaces whatever has the final name, a symbolic link itself
    rather than its target: like an earlier result, a link there is replaced, and
    checking for one first could not stop one planted just before the rename.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{secrets.token_hex(8)}.part")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def model_folders(args: argparse.Namespace) -> dict[str, str]:
    """The folders of the models ``--use-model`` may send a file to, by role: the server's
    rule (config.model_dirs), and the clean model always, for a x4 result's second pass."""
    folders = settings.model_dirs(
        {
            "MODEL_DIR": args.model,
            "PHOTO_MODEL_DIR": args.photo_model,
            "PHOTO_LOW_MODEL_DIR": args.photo_low_model,
        }
    )
    if args.use_model == AUTO:
        return folders
    return {role: folder for role, folder in folders.items() if role in (CLEAN, args.use_model)}


def load_models(folders: dict[str, str], args: argparse.Namespace) -> Models:
    """The server's loading code, with every core for the one process."""
    from supersizeme.service.upscaler import LoadSettings, open_upscaler

    settings = LoadSettings(
        runtime=args.runtime, precision=args.precision, tile=args.tile, threads=cpu_count()
    )
    return {role: open_upscaler(Path(folder), settings) for role, folder in folders.items()}


def run_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} exists and is not a folder", file=sys.stderr)
        return EXIT_USAGE
    output = Output(args.scale, args.image_format)
    jobs, failures = plan(args.paths, args.out, output)
    for failure in failures:
        print(failure, file=sys.stderr)
    written = 0
    if jobs:
        folders = model_folders(args)
        if args.use_model not in (AUTO, *folders):
            print(
                f"error: --use-model {args.use_model} needs --{args.use_model}-model "
                "(and photo-low a --photo-model beside it)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            models = load_models(folders, args)
        except Exception as exc:
            print(f"error: cannot load the models: {exc}", file=sys.stderr)
            return EXIT_USAGE
        limits = Limits(max_pixels=args.max_pixels, min_side=args.min_side)
        with tqdm(jobs, unit="image", file=sys.stderr, dynamic_ncols=True) as progress:
            for job in progress:
                failure = attempt(job, models, limits, output, args.use_model)
                if failure is None:
                    written += 1
                else:
                    failures.append(failure)
                    progress.write(str(failure), file=sys.stderr)
    print(summary(written, failures))
    return EXIT_FAILURES if failures else EXIT_OK


def summary(written: int, failures: list[Failure]) -> str:
    lines = [f"{written} written, {len(failures)} failed" + (":" if failures else ".")]
    lines += [f"  {failure}" for failure in failures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The ``python -m supersizeme`` entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return run_upscale(args)
    except KeyboardInterrupt:
        print("\ninterrupted; results written so far are complete", file=sys.stderr)
        return EXIT_INTERRUPTED
