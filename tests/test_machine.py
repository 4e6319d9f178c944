"""Reading what the CPU can do from /proc/cpuinfo, for every kind of host."""

from __future__ import annotations

from hosts import AMX, AVX2_ONLY, AVX512_BF16

from supersizeme import machine


def test_flags_and_model_are_read_from_cpuinfo(host):
    flags = machine.cpu_flags()
    assert machine.reported_flags(flags) == list(host.reported)
    assert machine.native_bfloat16(flags) == host.native_bfloat16
    assert machine.cpu_model() == host.cpuinfo.split("model name\t: ")[1].split("\n")[0]
    assert machine.hardware().endswith(" ".join(host.reported))


def test_the_first_core_is_read_from_the_text_given():
    assert machine.cpu_model(AMX.cpuinfo) == "Intel(R) Xeon(R) Platinum 8481C"
    assert machine.cpu_flags(AVX2_ONLY.cpuinfo) >= {"avx2", "fma"}
    assert "avx512f" not in machine.cpu_flags(AVX2_ONLY.cpuinfo)


def test_native_bfloat16_is_avx512_bf16_or_amx():
    assert machine.native_bfloat16(frozenset({"amx_bf16"}))
    assert machine.native_bfloat16(frozenset({"avx512_bf16"}))
    # VNNI alone is int8 arithmetic, not bfloat16.
    assert not machine.native_bfloat16(frozenset({"avx512f", "avx512_vnni"}))


def test_the_host_kind_names_the_fastest_matrix_unit():
    assert machine.host_kind(machine.cpu_flags(AVX2_ONLY.cpuinfo)) == "AVX2"
    assert machine.host_kind(machine.cpu_flags(AVX512_BF16.cpuinfo)) == "AVX-512 BF16"
    assert machine.host_kind(machine.cpu_flags(AMX.cpuinfo)) == "AMX"
    assert machine.host_kind(frozenset({"sse4_2"})) == "no AVX2"


def test_no_cpuinfo_means_no_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "missing")
    assert machine.cpu_flags() == frozenset()
    assert machine.cpu_model()  # falls back to the platform's word for it
    assert "cores" in machine.hardware()


def test_cores_are_at_least_one():
    assert machine.cpu_count() >= 1
