"""The runtime benchmark's decisions and report: rows by the host, shares by precision,
one section per kind of host."""

from __future__ import annotations

from benchmarks import runtime
from supersizeme.machine import cpu_flags


def test_bfloat16_rows_only_where_it_is_native(host):
    expected = ["float32", "bfloat16"] if host.native_bfloat16 else ["float32"]
    assert runtime.measured_precisions(cpu_flags()) == expected


def results(kind: str = "AVX-512 BF16") -> dict:
    tile = {"s_per_mp": 1.0, "set5_psnr": 37.36}
    return {
        "host_kind": kind,
        "machine": "Fake EPYC, 2 cores",
        "date": "2026-12-03",
        "flags": ["avx2", "avx512_bf16"],
        "cores": 2,
        "model": "rdn",
        "gflop_per_mp": 910.0,
        "repeat": 3,
        "load_before": "0.1",
        "load_after": "0.2",
        "peak": {
            "float32": {"1": 182.0, "all": 364.0},
            "bfloat16": {"1": 455.0, "all": 910.0},
            "openvino float32": {"1": 91.0, "all": 182.0},
        },
        "rows": [
            {"name": "net", "1": {**tile, "precision": p}, "all": {**tile, "precision": p}}
            for p in ("float32", "bfloat16")
        ],
        "bicubic": {"s_per_mp": 0.07},
    }


def test_each_row_is_a_share_of_its_own_precisions_peak():
    table = runtime.report(results())
    assert table.startswith("## AVX-512 BF16 host: Fake EPYC, 2 cores (2026-12-03)\n")
    # 910 GFLOP in 1 s: 500 % / 250 % of the higher float32 peak (numpy's here), 200 % /
    # 100 % of bfloat16's.
    assert "| net | float32 | 1.00 | 500% | 1.00 | 250% | 37.36 |" in table
    assert "| net | bfloat16 | 1.00 | 200% | 1.00 | 100% | 37.36 |" in table
    assert "bfloat16, OpenVINO 455.0 GFLOP/s at 1 thread, 910.0 at 2" in table


def test_float32_shares_are_against_the_faster_library():
    peaks = {"float32": {"1": 1.0, "all": 4.0}, "openvino float32": {"1": 3.0, "all": 2.0}}
    assert runtime.best_peak(peaks, "float32") == {"1": 3.0, "all": 4.0}


def test_a_run_replaces_its_own_kinds_section_and_keeps_the_others():
    avx2 = runtime.report({**results("AVX2"), "date": "2026-12-01"})
    first = runtime.report(results())
    second = runtime.report({**results(), "date": "2026-12-04"})
    text = runtime.merged(runtime.merged(runtime.merged("", first), avx2), second)
    assert text.startswith(runtime.TITLE)
    assert "2026-12-03" not in text and text.count("## ") == 2
    assert text.index("## AVX-512 BF16 host") < text.index("## AVX2 host")
    assert avx2 in text and second in text
