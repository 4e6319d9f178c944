"""Reading what the CPU can do from /proc/cpuinfo."""

from __future__ import annotations

from supersizeme import machine

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse4_2 avx f16c avx2 fma bmi2 vaes

processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse4_2 avx f16c avx2 fma bmi2 vaes
"""
SAPPHIRE_RAPIDS = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
    "flags\t\t: avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile\n"
)


def test_flags_and_model_are_read_from_cpuinfo():
    assert machine.cpu_model(ZEN3) == "AMD EPYC 7B13"
    flags = machine.cpu_flags(ZEN3)
    assert {"avx2", "fma"} <= flags and "avx512f" not in flags
    assert machine.reported_flags(flags) == ["avx2", "fma"]
    assert not machine.native_bfloat16(flags)


def test_native_bfloat16_is_avx512_bf16_or_amx():
    flags = machine.cpu_flags(SAPPHIRE_RAPIDS)
    assert machine.native_bfloat16(flags)
    assert machine.reported_flags(flags) == [
        "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
    ]  # fmt: skip
    assert machine.native_bfloat16(frozenset({"amx_bf16"}))
    # VNNI alone is int8 arithmetic, not bfloat16.
    assert not machine.native_bfloat16(frozenset({"avx512f", "avx512_vnni"}))


def test_no_cpuinfo_means_no_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "missing")
    assert machine.cpu_flags() == frozenset()
    assert machine.cpu_model()  # falls back to the platform's word for it
    assert "cores" in machine.hardware()


def test_cores_are_at_least_one():
    assert machine.cpu_count() >= 1
