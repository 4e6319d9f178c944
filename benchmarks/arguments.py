"""The command line every benchmark of a model folder starts from."""

from __future__ import annotations

import argparse
from pathlib import Path

from supersizeme.service.config import DEFAULT_MODEL, REPO_ROOT


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose help is the script's docstring as written, with ``--model``."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=REPO_ROOT / "models" / DEFAULT_MODEL,
        help="the model folder to measure (default: the shipped model)",
    )
    return parser
