"""The pixel cap from speed and memory, and the memory ledger of images in flight."""

from __future__ import annotations

import pytest

from supersizeme.service import capacity
from supersizeme.service.capacity import (
    BYTES_PER_OUTPUT_PIXEL,
    CEILING_PIXELS,
    FLOOR_PIXELS,
    MemoryClaim,
    MemoryFull,
    MemoryLedger,
    decide_cap,
)

GIB = 2**30
PLENTY = 64 * GIB


def test_a_fast_machine_raises_the_cap_to_what_an_upload_carries():
    # An AMX host: 1.42 s of inference and 0.2 s of encode per input MP, 30 s: 18.5 MP.
    fast = decide_cap(None, 1.42 + 0.2, 60.0, PLENTY)
    assert (fast.max_pixels, fast.decided_by) == (18_510_000, "speed")
    faster = decide_cap(None, 0.5, 60.0, PLENTY)
    assert (faster.max_pixels, faster.decided_by) == (CEILING_PIXELS, "upload size")


def test_a_slow_machine_keeps_the_cap_where_its_speed_puts_it():
    # An AVX2 host in float32: 7.2 + 0.3 s per input MP, 30 s: 4 MP.
    slow = decide_cap(None, 7.5, 60.0, PLENTY)
    assert (slow.max_pixels, slow.decided_by) == (4_000_000, "speed")
    assert decide_cap(None, 1e6, 1.0, PLENTY) == capacity.CapDecision(
        FLOOR_PIXELS, "floor", 0, PLENTY // (4 * BYTES_PER_OUTPUT_PIXEL)
    )


def test_memory_bounds_the_cap_when_it_is_the_smaller():
    one_gib = decide_cap(None, 0.5, 60.0, GIB)
    assert one_gib.decided_by == "memory"
    assert one_gib.max_pixels == GIB // (4 * BYTES_PER_OUTPUT_PIXEL) // 10_000 * 10_000
    assert capacity.output_bytes(one_gib.max_pixels, 2) <= GIB


def test_an_operators_cap_is_kept_as_set():
    kept = decide_cap(3_000_000, 100.0, 60.0, GIB // 8)
    assert (kept.max_pixels, kept.decided_by) == (3_000_000, "SSM_MAX_PIXELS")
    assert kept.speed_pixels == 300_000 and kept.memory_pixels < 3_000_000


def test_the_budget_is_the_workers_share_less_its_rest_and_headroom():
    budget = capacity.image_budget(8 * GIB, workers=2, resting_bytes=GIB)
    assert budget == 3 * GIB - capacity.HEADROOM_BYTES
    assert capacity.image_budget(GIB, workers=1, resting_bytes=2 * GIB) == 0


def test_the_memory_limit_is_the_cgroups_where_it_has_one(tmp_path, monkeypatch):
    limited = tmp_path / "memory.max"
    limited.write_text("3221225472\n")
    real_path = capacity.Path
    monkeypatch.setattr(
        capacity, "Path", lambda p: limited if p == "/sys/fs/cgroup/memory.max" else real_path(p)
    )
    assert capacity.memory_limit_bytes() == 3 * GIB
    limited.write_text("max\n")
    assert capacity.memory_limit_bytes() > 0  # the machine's, with no limit set


def test_x4_claims_four_times_the_memory_of_x2_and_grey_twice_colours():
    assert capacity.output_bytes(1000, 4) == 4 * capacity.output_bytes(1000, 2)
    assert capacity.output_bytes(1000, 2, grey=True) == 2 * capacity.output_bytes(1000, 2)


def test_the_ledger_refuses_what_would_not_fit_beside_the_images_in_flight():
    ledger = MemoryLedger(budget=capacity.output_bytes(1_000_000, 2))
    first, second = MemoryClaim(ledger, 2), MemoryClaim(ledger, 2)
    first.admit(600_000)
    with pytest.raises(MemoryFull) as refused:
        second.admit(600_000)
    assert refused.value.free == ledger.budget - capacity.output_bytes(600_000, 2)
    second.admit(400_000)  # what is left still serves a smaller image
    first.release()
    first.release()  # released once, however often
    assert ledger.reserved == capacity.output_bytes(400_000, 2)
    second.release()
    assert ledger.reserved == 0


def test_encode_speed_is_measured():
    assert 0 < capacity.encode_seconds_per_megapixel() < 60
