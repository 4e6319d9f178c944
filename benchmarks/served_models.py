"""Three models in one worker: what serving the photo models beside the clean one costs.

    python -m benchmarks.served_models --out benchmarks/served-models.md \
        --json benchmarks/served-models.json

Starts gunicorn (one worker, every other setting at its default) with the clean model alone
(``SSM_PHOTO_MODEL_DIR=none``) and with all three models, as the service ships,
``--rounds`` times each in turn, so that a slow moment of the machine falls on both. For
each start it reads the worker's resident memory at rest after warm-up (VmRSS), the memory
for images and the pixel cap the worker decided, and each model's warm-up speed from
/supersizeme/model; then it posts a photo-like 1024 x 768 image as PNG and as JPEGs of
quality 85 and 50, ``--repeat`` times each, in turn, and takes the inference stage of
Server-Timing. Prints a Markdown table with the machine named: medians over every start.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
from pathlib import Path

from PIL import Image

from benchmarks.arguments import benchmark_parser
from benchmarks.gunicorn_server import request, running_gunicorn
from benchmarks.latency import photo_like
from benchmarks.memory import parse
from supersizeme.machine import hardware
from supersizeme.service.config import DEFAULT_PHOTO_LOW_MODEL, DEFAULT_PHOTO_MODEL, REPO_ROOT

HERE = Path(__file__).resolve().parent
ALONE, ALL = "clean model alone", "clean and both photo models"
SIZE = (1024, 768)
MIB = 2**20


JPEG_QUALITIES = (85, 50)


def uploads() -> dict[str, bytes]:
    png = photo_like(*SIZE)
    files = {"PNG": png}
    for quality in JPEG_QUALITIES:
        jpeg = io.BytesIO()
        Image.open(io.BytesIO(png)).save(jpeg, "JPEG", quality=quality)
        files[f"JPEG q{quality}"] = jpeg.getvalue()
    return files


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def measure_start(model: Path, photos: tuple[Path, Path] | None, repeat: int) -> dict:
    """One gunicorn start: memory at rest, what the worker decided, inference per upload."""
    photo, photo_low = photos or (None, None)
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "gunicorn.log"
        with running_gunicorn(
            model, log, photo_model_dir=photo, photo_low_model_dir=photo_low
        ) as server:
            (worker,) = server.worker_pids()
            rest = resident_mib(worker)
            info = json.loads(request(server.port, "GET", "/supersizeme/model")[2])
            inference: dict[str, list[float]] = {name: [] for name in uploads()}
            routed: dict[str, str] = {}
            files = uploads()
            for _ in range(repeat):
                for name, data in files.items():
                    status, headers, body = request(
                        server.port, "POST", "/supersizeme/", data, timeout=300
                    )
                    if status != 200:
                        raise RuntimeError(f"{name}: {status} {body[:200]!r}")
                    stages = parse(headers["Server-Timing"])
                    inference[name].append(stages["inference"] / 1000)
                    routed[name] = headers["X-Model"]
            return {
                "rest_mib": rest,
                "memory_for_images_mib": info["limits"]["memory_for_images_bytes"] / MIB,
                "max_pixels": info["limits"]["max_pixels"],
                "max_pixels_decided_by": info["limits"]["max_pixels_decided_by"],
                "warm_up_s_per_mp": {m["role"]: m["seconds_per_megapixel"] for m in info["models"]},
                "inference_s": inference,
                "routed": routed,
            }


def summarise(starts: list[dict]) -> dict:
    megapixels = SIZE[0] * SIZE[1] / 1e6
    first = starts[0]
    return {
        "starts": len(starts),
        "rest_mib": statistics.median(s["rest_mib"] for s in starts),
        "memory_for_images_mib": statistics.median(s["memory_for_images_mib"] for s in starts),
        "max_pixels": statistics.median(s["max_pixels"] for s in starts),
        "max_pixels_decided_by": first["max_pixels_decided_by"],
        "warm_up_s_per_mp": {
            role: statistics.median(s["warm_up_s_per_mp"][role] for s in starts)
            for role in first["warm_up_s_per_mp"]
        },
        "inference_s_per_mp": {
            name: statistics.median(t for s in starts for t in s["inference_s"][name]) / megapixels
            for name in first["inference_s"]
        },
        "routed": first["routed"],
    }


def report(results: dict[str, dict], repeat: int) -> str:
    clean, both = results[ALONE], results[ALL]
    lines = [
        "# Three models in one worker",
        "",
        f"Machine: {hardware()}. One gunicorn worker, default settings; {clean['starts']} starts "
        f"of each layout, taken in turn; a {SIZE[0]} x {SIZE[1]} photo-like image as PNG and as "
        f"JPEGs of quality {' and '.join(map(str, JPEG_QUALITIES))}, {repeat} times each per "
        "start. Medians; the ratio column is from this one run (all models / clean alone).",
        "",
        f"| measure | {ALONE} | {ALL} | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]

    def line(label: str, a: float, b: float, digits: int = 2) -> None:
        lines.append(f"| {label} | {a:,.{digits}f} | {b:,.{digits}f} | {b / a:.3f} |")

    line("worker's resident memory at rest (MiB)", clean["rest_mib"], both["rest_mib"], 0)
    line(
        "memory for images (MiB)",
        clean["memory_for_images_mib"],
        both["memory_for_images_mib"],
        0,
    )
    line("pixel cap in force", clean["max_pixels"], both["max_pixels"], 0)
    line(
        "clean model's warm-up speed (s / MP)",
        clean["warm_up_s_per_mp"]["clean"],
        both["warm_up_s_per_mp"]["clean"],
    )
    for name in clean["routed"]:
        line(
            f"{name} upload's inference (s / input MP; model: {clean['routed'][name]} / "
            f"{both['routed'][name]})",
            clean["inference_s_per_mp"][name],
            both["inference_s_per_mp"][name],
        )
    lines += ["", f"The pixel cap was decided by {both['max_pixels_decided_by']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--photo-model", type=Path, default=REPO_ROOT / "models" / DEFAULT_PHOTO_MODEL
    )
    parser.add_argument(
        "--photo-low-model", type=Path, default=REPO_ROOT / "models" / DEFAULT_PHOTO_LOW_MODEL
    )
    parser.add_argument("--rounds", type=int, default=2, help="starts of each layout")
    parser.add_argument("--repeat", type=int, default=3, help="uploads of each format per start")
    parser.add_argument("--out", type=Path, default=HERE / "served-models.md")
    parser.add_argument("--json", type=Path, default=HERE / "served-models.json")
    args = parser.parse_args()
    layouts = {ALONE: None, ALL: (args.photo_model, args.photo_low_model)}
    starts: dict[str, list[dict]] = {name: [] for name in layouts}
    for _ in range(args.rounds):
        for name, photos in layouts.items():
            starts[name].append(measure_start(args.model, photos, args.repeat))
            print(name, json.dumps(starts[name][-1]), flush=True)
    results = {name: summarise(runs) for name, runs in starts.items()}
    text = report(results, args.repeat)
    args.out.write_text(text)
    args.json.write_text(json.dumps({"machine": hardware(), "starts": starts}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
