"""The worst-case memory benchmark's bookkeeping (benchmarks/memory.py) and how the sizing
rule (benchmarks/load.py) takes its result, on made-up measurements."""

from __future__ import annotations

import io
import json

from PIL import Image

from benchmarks import load, memory
from supersizeme.service.config import MAX_BODY_BYTES


def answer(label: str, sent: float, answered: float, **timing: float) -> memory.Answer:
    return memory.Answer(label, 200, "", sent, answered, timing)


def test_server_timing_is_read_stage_by_stage():
    header = "decode;dur=80.7, queue;dur=0.1, inference;dur=22065.9, encode;dur=1874.0"
    assert memory.parse(header) == {
        "decode": 80.7,
        "queue": 0.1,
        "inference": 22065.9,
        "encode": 1874.0,
    }
    assert memory.parse("") == {}


def test_hostile_uploads_count_as_concurrent_only_inside_the_inference():
    # Inference from 1.5 s to 11.5 s: the answer came at 12 s, after 0.5 s of encoding.
    main = answer("main", 0.0, 12.0, inference=10_000.0, encode=500.0)
    inside = [main, answer("hostile", 2.0, 30.0), answer("hostile", 11.0, 31.0)]
    assert memory.during_inference(inside, "main")
    assert not memory.during_inference([main, answer("hostile", 1.0, 30.0)], "main")
    refused = memory.Answer("main", 503, "deadline_exceeded", 0.0, 60.0, {})
    assert not memory.during_inference([refused, answer("hostile", 2.0, 30.0)], "main")


def run(worker: float, front: tuple[float, float, float] = (8.0, 8.0, 48.0)) -> dict:
    peaks = dict(zip(memory.FRONT_ROLES, front, strict=True))
    return {
        "peak_mib": {"gunicorn worker": worker, "gunicorn master": 49.0, **peaks},
        "answers": [],
    }


def test_a_scenario_keeps_the_largest_peak_of_each_role_and_the_worst_the_largest_row():
    idle = memory.combine("idle", [run(400.0), run(900.0)])
    assert idle["peak_mib"]["gunicorn worker"] == 900.0
    assert idle["front_mib"] == 64.0 and idle["replica_mib"] == 900.0 + 49.0 + 64.0
    busy = memory.combine("busy", [run(1700.0, (9.0, 10.0, 48.0)), run(1600.0)])
    worst = memory.worst([idle, busy])
    assert worst["worker_peak_mib"] == 1700.0 and worst["worker_scenario"] == "busy"
    assert worst["front_peak_mib"] == 67.0 and worst["master_peak_mib"] == 49.0


def test_the_body_filling_png_fits_the_limit_at_its_size():
    data = memory.noisy_png(64, 48, 6_000)
    assert 5_000 < len(data) <= 6_000
    assert Image.open(io.BytesIO(data)).size == (64, 48)


SOAK = [
    {"memory": {"1": {"role": "master", "peak_mib": 50.0}}},
    {"memory": {"2": {"role": "worker", "peak_mib": 800.0}}},
]


def test_sizing_holds_the_worst_case_and_the_front(tmp_path, monkeypatch):
    measured = tmp_path / "memory.json"
    worst = {"worker_peak_mib": 1000.0, "master_peak_mib": 60.0, "front_peak_mib": 66.0}
    measured.write_text(json.dumps({"machine": "m", "date": "d", "worst": worst}))
    monkeypatch.setattr(load, "MEMORY_WORST_CASES", (measured, tmp_path / "absent.json"))
    sizing = load.sizing(SOAK, workers=1, threads=2)
    # (1 x 1000 + 60 + 66) x 1.25 = 1407.5 -> 1408 = 11 x 128
    assert sizing["memory_limit_mib"] == sizing["memory_request_mib"] == 1408
    assert sizing["worst_case_worker_peak_mib"] == 1000.0 and sizing["front_peak_mib"] == 66.0
    assert sizing["master_peak_mib"] == 60.0 and sizing["worst_case_measured"] == "m, d"
    assert sizing["cpu_limit"] == sizing["cpu_request"] == 2
    # A soak whose workers peaked higher wins: (1 x 1200 + 60 + 66) x 1.25 = 1657.5
    heavy = [*SOAK, {"memory": {"3": {"role": "worker", "peak_mib": 1200.0}}}]
    assert load.sizing(heavy, workers=1, threads=2)["memory_limit_mib"] == 1664


def test_the_precision_whose_worker_peaks_higher_sizes(tmp_path, monkeypatch):
    reports = []
    for precision, peak in (("bfloat16", 1000.0), ("float32", 1500.0)):
        worst = {"worker_peak_mib": peak, "master_peak_mib": 60.0, "front_peak_mib": 66.0}
        report = {"machine": "m", "date": "d", "settings": {"precision": precision}}
        reports.append(tmp_path / f"{precision}.json")
        reports[-1].write_text(json.dumps({**report, "worst": worst}))
    monkeypatch.setattr(load, "MEMORY_WORST_CASES", tuple(reports))
    sizing = load.sizing(SOAK, workers=1, threads=2)
    # (1 x 1500 + 60 + 66) x 1.25 = 2032.5 -> 2048
    assert sizing["worst_case_worker_peak_mib"] == 1500.0 and sizing["memory_limit_mib"] == 2048
    assert sizing["worst_case_measured"] == "m, d, float32"


def test_without_a_worst_case_the_soak_alone_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(load, "MEMORY_WORST_CASES", (tmp_path / "absent.json",))
    sizing = load.sizing(SOAK, workers=2)
    # (2 x 800 + 50) x 1.25 = 2062.5
    assert sizing["memory_limit_mib"] == 2176 and sizing["front_peak_mib"] == 0.0
    assert sizing["worst_case_measured"] is None
    assert "never" in load.markdown({**minimal_report(), "sizing": sizing})


def minimal_report() -> dict:
    return {
        "label": "t",
        "machine": "m",
        "model": "x",
        "workers": 2,
        "capacity": 2,
        "command": "c",
        "runs": [],
    }


def test_the_hostile_uploads_are_accepted_files_of_decode_bounds():
    # A renamed file in benchmarks/decode_bounds.py fails here rather than in a long run.
    uploads = memory.hostile_uploads()
    assert [upload.label for upload in uploads] == list(memory.HOSTILE)
    for upload in uploads:
        assert len(upload.data) <= MAX_BODY_BYTES
        kind = "image/png" if upload.data.startswith(b"\x89PNG") else "image/jpeg"
        assert upload.content_type == kind
