"""The three kinds of host the suite runs on, as /proc/cpuinfo describes them.

Decisions made from the CPU's flags (precision, the bfloat16 check's runtime, the
benchmark's rows) are tested for every kind on whichever host runs the suite, through the
``host`` fixture, which puts a fake cpuinfo in place of the real one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostKind:
    name: str
    cpuinfo: str
    reported: tuple[str, ...]  # machine.reported_flags of its flags
    native_bfloat16: bool


def cpuinfo(model: str, flags: str, cores: int = 2) -> str:
    return "".join(
        f"processor\t: {core}\nvendor_id\t: {model.split()[0]}\nmodel name\t: {model}\n"
        f"flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c {flags}\n\n"
        for core in range(cores)
    )


AVX2_ONLY = HostKind(
    "avx2",
    cpuinfo("AMD EPYC 7B13", "avx2 fma bmi2 vaes"),
    ("avx2", "fma"),
    native_bfloat16=False,
)
AVX512_BF16 = HostKind(
    "avx512-bf16",
    cpuinfo("AMD EPYC 9B14", "avx2 fma avx512f avx512_vnni avx512_bf16 avx_vnni"),
    ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni"),
    native_bfloat16=True,
)
AMX = HostKind(
    "amx",
    cpuinfo(
        "Intel(R) Xeon(R) Platinum 8481C",
        "avx2 fma avx512f avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8",
    ),
    ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8"),
    native_bfloat16=True,
)
HOST_KINDS = (AVX2_ONLY, AVX512_BF16, AMX)
