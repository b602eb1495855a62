"""The step profile's arithmetic (tpserve.engines.stepprofile): GPU busy time is the union of kernel
intervals, idle is the span less busy, the longest gaps name the kernels on both sides; a bad
TPSERVE_PROFILE is refused with the form it wants. The window on live ranks: test_server."""

import pytest

from tpserve.engines.stepprofile import StepProfile, kernel_kind, kernel_table


def test_busy_idle_and_gaps_from_a_timeline() -> None:
    events = [  # (name, start us, end us): two overlapping all-reduces, then a 500 us hole
        ("nvjet_sm90_gemm", 0.0, 100.0),
        ("ncclDevKernel_AllReduce", 100.0, 150.0),
        ("ncclDevKernel_AllGather", 120.0, 160.0),
        ("Memcpy HtoD (Pinned -> Device)", 660.0, 670.0),
        ("flash_fwd_kernel", 675.0, 700.0),
    ]
    got = kernel_table(events, steps=2, gaps=3)
    assert got["busy_ms_per_step"] == pytest.approx((160 + 10 + 25) / 2 / 1000)
    assert got["idle_ms_per_step"] == pytest.approx((700 - 195) / 2 / 1000)
    assert got["kernel_ms_per_step"] == pytest.approx((100 + 50 + 40 + 10 + 25) / 2 / 1000)
    assert got["by_kind_ms_per_step"]["all-reduce (NCCL)"] == pytest.approx(0.045)
    longest = got["longest_gaps"][0]
    assert (longest["us"], longest["after"], longest["before"]) == (
        500.0, "ncclDevKernel_AllGather", "Memcpy HtoD (Pinned -> Device)",
    )  # fmt: skip
    assert got["idle_gaps_over_10us"] == {"per_step": 0.5, "ms_per_step": 0.25}
    assert [kernel_kind(n) for n, _, _ in events] == [
        "GEMM", "all-reduce (NCCL)", "all-reduce (NCCL)", "copy / fill", "attention + rotary",
    ]  # fmt: skip


@pytest.mark.parametrize("spec", ["", "3", "0:4:/tmp/x", "3:0:/tmp/x", "a:4:/tmp/x", "3:4:"])
def test_a_bad_spec_is_refused_with_the_form_it_wants(spec: str) -> None:
    with pytest.raises(ValueError, match="START:COUNT:DIR"):
        StepProfile(spec, 0)
