"""The cross-host code path on one machine: torchrun with LOCAL_SIZE=1 makes every rank believe it is
alone on its host, so DeepSpeed's shared-memory all-reduce is off and tpserve must switch DeepSpeed to
the gloo all-reduce (shm_vector_kernel_level = 0; without it this setup segfaults, deepspeed#7625)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from conftest import launched

pytestmark = pytest.mark.slow


def test_ranks_on_separate_hosts_use_gloo_allreduce_and_match_transformers(
    model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log = tmp_path / "server.log"
    with launched(model_dir, log, torchrun_local_size=1) as srv:
        health = httpx.get(srv.base_url + "/health", timeout=10).json()
        assert [abs(r["linear_fraction"] - 0.5) <= 0.02 for r in health["ranks"]] == [True, True]
        r = httpx.post(
            srv.base_url + "/generate", json={"prompt": "cross host", "max_new_tokens": 16}, timeout=60
        )
        assert r.status_code == 200, r.text
        served = r.json()["output_token_ids"]
        text = log.read_text(errors="replace")
        assert "shm all-reduce disabled" in text
        assert "deepspeed_shm_comm_op built" not in text  # no 30-90 s JIT build for an op that cannot be used
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = [tok.eos_token_id, tok.pad_token_id]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "cross host"}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=eos[1])
    assert served == [t for t in out[0, ids.shape[1] :].tolist() if t not in eos]
