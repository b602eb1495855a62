"""The one-shot all-reduce's fallbacks without a GPU: where symmetric memory cannot be set up the
engine keeps NCCL (deepspeed.comm) for every call and says why. The one-shot path itself runs on
the GPU host (tests/gpu/graphs.sh: TP=2 with and without it, greedy tokens compared)."""

import types

import torch

from tpserve.engines.allreduce import OneShotAllReduce, _Comm, install


class Base:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def all_reduce(self, tensor: torch.Tensor, *args: object, **kwargs: object) -> str:
        self.calls.append((tensor.shape, args, tuple(sorted(kwargs))))
        return "nccl"

    def get_rank(self) -> int:
        return 0

    def inference_all_reduce(self, tensor: torch.Tensor, *args: object, **kwargs: object) -> str:
        self.calls.append(("inference", tensor.shape))
        return "ds"


def test_without_symmetric_memory_every_call_stays_on_the_base() -> None:
    fast = OneShotAllReduce(None, torch.device("cpu"))
    assert fast.off_reason  # no process group / no CUDA here: off, with the reason
    assert fast.describe()["enabled"] is False
    base = Base()
    comm = _Comm(base, fast)
    t = torch.zeros(4, dtype=torch.float16)
    assert comm.all_reduce(t, group="g") == "nccl"
    assert comm.all_reduce(t, "op", group="g") == "nccl"  # other arguments: never ours
    assert comm.inference_all_reduce(t, group="g") == "ds"  # autotp's row-parallel layers
    assert comm.get_rank() == 0 and len(base.calls) == 3 and fast.calls == 0


def test_install_patches_only_the_model_module() -> None:
    module = types.ModuleType("fake_v2_model")
    base = Base()
    module.dist = base  # type: ignore[attr-defined]
    model_cls = type("Model", (), {"__module__": "fake_v2_model"})
    import sys

    sys.modules["fake_v2_model"] = module
    try:
        fast = OneShotAllReduce(None, torch.device("cpu"))
        assert install(model_cls().__module__, fast) == "installed in fake_v2_model"
        assert isinstance(module.dist, _Comm)
        install("fake_v2_model", fast)  # twice: not wrapped twice
        assert module.dist._base is base  # type: ignore[attr-defined]
    finally:
        del sys.modules["fake_v2_model"]
