"""What a model folder holds, read without TensorFlow.

A model folder ``models/<name>/`` is the contract between training and serving:
``model.json`` gives the RDN parameters (and, once evaluated, the measured numbers)
and ``weights.weights.h5`` holds the Keras weights. Keeping this module free of
TensorFlow lets the HTTP layer and its tests read a model's description in
milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "weights.weights.h5"
SPEC_FILE = "model.json"
# The OpenVINO network derived from the weights at export (rdn.derive_openvino), the
# form the server runs; model.json's "openvino" entry records the checksums of both files
# and of the weights they were derived from.
OPENVINO_DIR = "openvino"
OPENVINO_FILES = ("model.xml", "model.bin")


class ModelFolderError(RuntimeError):
    """A model folder is missing, incomplete or does not match its weights."""


@dataclass(frozen=True)
class RDNParams:
    """The RDN hyper-parameters of Zhang et al. 2018 (arXiv 1802.08797).

    C: convolutions per residual dense block (RDB); D: number of RDBs;
    G: growth rate (filters of each convolution inside an RDB);
    G0: filters of the shallow features and of each RDB's output; scale: upscaling factor.
    """

    C: int
    D: int
    G: int
    G0: int
    scale: int = 2
    upscaling: str = "shuffle"

    @property
    def name(self) -> str:
        """ISR's naming scheme, e.g. ``rdn-C3-D10-G64-G064-x2``."""
        return f"rdn-C{self.C}-D{self.D}-G{self.G}-G0{self.G0}-x{self.scale}"

    @property
    def receptive_radius(self) -> int:
        """How many input pixels on each side can influence one output pixel.

        Counted from ISR's layer stack: two 3x3 shallow convolutions, D*C 3x3 convolutions
        in the RDBs, the 3x3 global fusion, the 5x5 and two 3x3 convolutions of the
        upscaling block, and the final 3x3 convolution at the output resolution (half an
        input pixel, rounded up). Tiles overlapping by this much give the same output as
        one whole-image pass.
        """
        return 2 + self.D * self.C + 1 + 2 + 1 + 1 + 1

    def convolutions(self, channels: int = 3) -> list[tuple[str, int, int, int]]:
        """ISR's convolutions as (layer name, in, out, kernel size), in the order Keras
        lists the network's weights (each layer's kernel, then its bias)."""
        C, D, G, G0 = self.C, self.D, self.G, self.G0
        layers = [("F_m1", channels, G0, 3), ("F_0", G0, G0, 3)]
        for d in range(1, D + 1):
            layers += [(f"F_{d}_{c}", G0 + (c - 1) * G, G, 3) for c in range(1, C + 1)]
            layers.append((f"LFF_{d}", G0 + C * G, G0, 1))
        layers += [("GFF_1", D * G0, G0, 1), ("GFF_2", G0, G0, 3)]
        layers += [("UPN1", G0, 64, 5), ("UPN2", 64, 32, 3)]
        layers += [("UPN3", 32, channels * self.scale**2, 3), ("SR", channels, channels, 3)]
        return layers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RDNParams:
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: data[k] for k in known if k in data})
        except TypeError as exc:
            raise ModelFolderError(f"model parameters incomplete: {exc}") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelFolder:
    """A model folder on disk: its parameters, its weights file and its card data."""

    path: Path
    params: RDNParams
    spec: dict[str, Any]

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    def openvino_model(self) -> Path:
        """The derived OpenVINO network's ``model.xml``, checked against ``model.json``.

        A missing entry, a missing file, a changed file or one derived from other weights
        is a ModelFolderError: serving a network that is not these weights' would be silent.
        """
        record = self.spec.get("openvino")
        where = self.path / OPENVINO_DIR
        if not record:
            raise ModelFolderError(
                f"{self.path} has no OpenVINO network; derive it with "
                f"`python -m supersizeme.toolchain.export --derive {self.path}`"
            )
        if record.get("weights_sha256") != self.spec.get("weights_sha256"):
            raise ModelFolderError(f"{where} was derived from other weights; derive it again")
        for name in OPENVINO_FILES:
            path = where / name
            if not path.is_file() or sha256_of(path) != record["sha256"].get(name):
                raise ModelFolderError(f"{path} is missing or does not match {SPEC_FILE}")
        return where / OPENVINO_FILES[0]

    @classmethod
    def open(cls, path: str | Path) -> ModelFolder:
        folder = Path(path)
        spec_path = folder / SPEC_FILE
        if not spec_path.is_file():
            raise ModelFolderError(f"no {SPEC_FILE} in model folder {folder}")
        try:
            spec = json.loads(spec_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelFolderError(f"{spec_path} is not valid JSON: {exc}") from exc
        model = cls(folder, RDNParams.from_json(spec), spec)
        if not model.weights_path.is_file():
            raise ModelFolderError(f"no weights file {model.weights_path}")
        expected = spec.get("weights_sha256")
        if expected and expected != sha256_of(model.weights_path):
            raise ModelFolderError(
                f"{model.weights_path} does not match the sha256 recorded in {spec_path}"
            )
        return model


def write_spec(folder: Path, spec: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=False) + "\n")
