"""The load script's statistics and sizing rule (benchmarks/load.py), on made-up answers."""

from __future__ import annotations

import pytest

from benchmarks import load


def answer(seconds: float, status: int = 200, pixels: int = 1_000_000) -> load.Answer:
    return load.Answer(seconds=seconds, status=status, code="", pixels=pixels)


def test_percentiles_interpolate_between_ranks():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert load.percentile(values, 50) == pytest.approx(50.5)
    assert load.percentile(values, 95) == pytest.approx(95.05)
    assert load.percentile(values, 99) == pytest.approx(99.01)
    assert load.percentile([3.0], 99) == 3.0
    assert load.percentile([], 50) is None


def test_summary_counts_only_successes_for_speed():
    answers = [answer(s) for s in (1.0, 2.0, 3.0, 4.0)]
    answers += [answer(0.01, 429), answer(0.02, 503)]
    answers[-2].code, answers[-1].code = "overloaded", "deadline_exceeded"
    summary = load.summarise(answers, wall_seconds=10.0)
    assert summary["requests"] == 6 and summary["ok"] == 4
    assert summary["statuses"] == {"200": 4, "429 overloaded": 1, "503 deadline_exceeded": 1}
    assert summary["requests_per_s"] == pytest.approx(0.4)
    assert summary["input_mp_per_s"] == pytest.approx(0.4)
    assert summary["latency_s"]["p50"] == pytest.approx(2.5)
    assert summary["latency_s"]["max"] == 4.0


def test_summary_of_a_run_without_successes():
    summary = load.summarise([answer(0.01, 429)], wall_seconds=5.0)
    assert summary["ok"] == 0 and summary["latency_s"]["p95"] is None


def test_memory_trace_flags_growth_in_the_second_half():
    # Up with each image and down after it, peaking at the same height: steady.
    steady = load.MemoryTrace("worker", [500.0, 700.0, 560.0, 705.0, 600.0, 702.0]).summary()
    assert steady["peak_mib"] == 705.0 and steady["flat"]
    assert steady["start_mib"] == 500.0 and steady["end_mib"] == 702.0
    growing = load.MemoryTrace("worker", [500.0, 700.0, 720.0, 760.0, 800.0, 780.0]).summary()
    assert growing["second_half_growth_mib"] == 80.0 and not growing["flat"]


def test_sizing_takes_the_larger_worker_peak_and_rounds_up(monkeypatch):
    monkeypatch.setattr(load, "cap_peak_rss_mib", lambda: 1000.0)
    runs = [
        {"memory": {"1": {"role": "master", "peak_mib": 50.0}}},
        {"memory": {"2": {"role": "worker", "peak_mib": 800.0}}},
    ]
    sizing = load.sizing(runs, workers=2)
    # (2 x 1000 + 50) x 1.25 = 2562.5 -> 2560 + 128
    assert sizing["memory_limit_mib"] == sizing["memory_request_mib"] == 2688
    assert sizing["cpu_limit"] == 2
    monkeypatch.setattr(load, "cap_peak_rss_mib", lambda: 500.0)
    # The soak's own peak wins when it is the larger: (2 x 800 + 50) x 1.25 = 2062.5
    assert load.sizing(runs, workers=2)["memory_limit_mib"] == 2176
