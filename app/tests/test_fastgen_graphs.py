"""DecodeGraphs' policy without a GPU: which steps it would graph, and that a capture that fails
(here: there is no CUDA) leaves the engine serving eagerly with the reason in /health.
The capture and replay themselves are proven on the GPU host (tests/gpu/graphs_equal.sh)."""

from dataclasses import dataclass

import torch

from tpserve.engines.fastgen.graphs import DecodeGraphs


@dataclass
class Batch:
    current_tokens: int
    current_sequences: int


def test_prefill_steps_stay_eager_and_a_failed_capture_keeps_serving() -> None:
    calls: list[Batch] = []

    def eager(batch: Batch) -> torch.Tensor:
        calls.append(batch)
        return torch.full((batch.current_sequences, 4), float(len(calls)))

    graphs = DecodeGraphs(eager, torch.device("cpu"))
    prefill = Batch(current_tokens=300, current_sequences=2)
    assert graphs(prefill)[0, 0] == 1.0  # a prompt chunk: eager, no capture tried
    assert graphs.off_reason is None and graphs.describe()["batch_sizes"] == []

    decode = Batch(current_tokens=3, current_sequences=3)
    out = graphs(decode)  # the step's own result comes from the eager run, then the capture fails
    assert out.shape == (3, 4) and out[0, 0] == 2.0
    info = graphs.describe()
    assert info["enabled"] is False and "capture at batch 3 failed" in info["off_reason"]
    assert info["batch_sizes"] == [] and info["replays"] == 0

    assert graphs(decode)[0, 0] == 3.0  # and every later step runs eagerly
    assert len(calls) == 3
