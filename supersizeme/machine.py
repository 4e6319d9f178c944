"""What this process runs on: usable cores and the CPU's instruction sets.

Hosts differ from one deployment to the next (AVX2-only cores next to AVX-512 ones with
native bfloat16), so precision, threads and limits are chosen from what is read here at
start-up, never assumed.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# The ISA extensions that decide how fast the network's convolutions can run; the
# benchmark and /supersizeme/model report these, not the whole flags line.
REPORTED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
)
# Instructions that compute bfloat16 dot products in hardware. Elsewhere bfloat16 is
# emulated and slower than float32.
NATIVE_BFLOAT16 = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_count() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    In a container limited with ``--cpus`` the affinity still lists every host core; the
    quota in cpu.max is what the scheduler enforces.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


def _cpuinfo_field(name: str, cpuinfo: str | None = None) -> str | None:
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or "unknown CPU"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The first core's ISA flags from ``/proc/cpuinfo`` (empty where there is none)."""
    return frozenset((_cpuinfo_field("flags", cpuinfo) or "").split())


def reported_flags(flags: frozenset[str]) -> list[str]:
    return [flag for flag in REPORTED_FLAGS if flag in flags]


def native_bfloat16(flags: frozenset[str]) -> bool:
    return bool(flags & NATIVE_BFLOAT16)


def host_kind(flags: frozenset[str]) -> str:
    """The kind of host by its fastest matrix unit: ``AMX``, ``AVX-512 BF16``, ``AVX2``.

    Benchmarks keep a table per kind: the same network runs several times faster per
    core on one kind than on another, so figures compare only within a kind.
    """
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    return "AVX2" if "avx2" in flags else "no AVX2"


def hardware() -> str:
    """CPU model, cores, platform, ISA: ``AMD EPYC, 2 cores, Linux x86_64, avx2 fma``."""
    isa = " ".join(reported_flags(cpu_flags())) or "no AVX2"
    return f"{cpu_model()}, {cpu_count()} cores, {platform.system()} {platform.machine()}, {isa}"
