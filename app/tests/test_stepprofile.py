"""The step profile's arithmetic (tpserve.engines.stepprofile): GPU busy time is the union of kernel
intervals, idle is the span less busy, the longest gaps name the kernels on both sides; a bad
TPSERVE_PROFILE is refused with the form it wants. The window on live ranks: test_server."""

import json
import logging
from pathlib import Path

import pytest
import torch

from tpserve.engines.base import EngineError
from tpserve.engines.stepprofile import PROFILE_ENV, StepProfile, kernel_kind, kernel_table


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


def _step(uids, chunks, shared=0):  # what an engine's run_step returns: one row of logits per uid
    return torch.zeros(len(uids), 4)


def test_the_window_writes_its_rank_file_and_steps_go_on(tmp_path: Path) -> None:
    profile = StepProfile(f"2:3:{tmp_path / 'out'}", 5)
    run_step = profile.wrap(_step)
    for _ in range(6):
        assert run_step([1, 2], [[3], [4]]).shape == (2, 4)
    got = json.loads((tmp_path / "out" / "stepprofile-rank5.json").read_text())
    assert (got["rank"], got["steps"], got["first_step"]) == (5, 3, 2)
    assert got["gpu"] == "none (CPU rank)" and got["wall_ms_per_step"] > 0


def test_a_failed_profile_never_breaks_a_step(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    profile = StepProfile(f"1:2:{blocker / 'sub'}", 0)  # DIR cannot be made: a file is in the way
    run_step = profile.wrap(_step)
    with caplog.at_level(logging.ERROR):
        for _ in range(4):
            assert run_step([1], [[3]]).shape == (1, 4)
    assert profile.result is not None and "failed, no step profile" in caplog.text


def test_a_bad_env_spec_stops_the_rank_as_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, "10:x:/tmp/p")
    with pytest.raises(EngineError, match="START:COUNT:DIR"):
        StepProfile.install(object(), 0)
    monkeypatch.setenv(PROFILE_ENV, "")
    assert StepProfile.install(object(), 0) is None
