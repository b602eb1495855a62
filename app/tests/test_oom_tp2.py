"""A CUDA OOM inside a forward on a real TP=2 launch (DeepSpeed launcher, autotp, CPU): the group
keeps serving. The fault is a real torch.cuda.OutOfMemoryError raised from inside engine.forward
(TPSERVE_TEST_FAULT_OOM, tpserve.control.ranks.TestFaultOOM), three faults in one launch:

    1:4:1          rank 1 alone, once its forward of 4 sequences has run: all 4 requests finish,
                   tokens equal to their answers alone (recomputed, 2 per step)
    1:4:4          rank 1, 4 forwards in a row: 4 -> 2 -> 1 -> 1 sequences: the 2 newest requests
                   get 503 + Retry-After, the 2 oldest finish with their answers alone
    *:4:1:before   every rank, before its forward (an OOM that strikes all ranks at the same place)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

PROMPTS = [f"Tell me about the number {i}." for i in range(4)]
TOKENS = 24


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


async def _in_order(client: httpx.AsyncClient, url: str) -> list[httpx.Response]:
    """POST the 4 prompts so the scheduler admits them in this order (oldest first): each is sent
    once the one before it is in flight."""
    tasks = []
    for i, prompt in enumerate(PROMPTS):
        body = {"prompt": prompt, "max_new_tokens": TOKENS, "ignore_eos": True}
        tasks.append(asyncio.create_task(client.post(url + "/generate", json=body)))
        # until it is in flight, or already answered (a 503 for the newest can come before the poll
        # sees 4 in flight: an unbounded wait hung a CI run); bounded either way
        deadline = time.monotonic() + 60
        while not tasks[-1].done() and (await client.get(url + "/health")).json()["in_flight"] < i + 1:
            assert time.monotonic() < deadline, f"request {i} never showed up in flight"
            await asyncio.sleep(0.005)
    return list(await asyncio.gather(*tasks))


async def _cap_restored(client: httpx.AsyncClient, url: str) -> None:
    """Good steps bring the batch cap a CUDA OOM set back (OOM_RESTORE_STEPS per doubling)."""
    for _ in range(12):
        if (await client.get(url + "/health")).json()["oom_batch_cap"] is None:
            return
        await client.post(url + "/generate", json={"prompt": "x", "max_new_tokens": 32, "ignore_eos": True})
    raise AssertionError("the batch cap was not restored")


async def phases(url: str) -> dict[str, list]:
    """The three faults' requests against a server started with FAULT_SPEC (also run by hand against
    a GPU server: `python app/tests/test_oom_tp2.py URL`)."""
    out: dict[str, list] = {}
    async with httpx.AsyncClient(timeout=120) as c:
        alone = []
        for p in PROMPTS:
            body = {"prompt": p, "max_new_tokens": TOKENS, "ignore_eos": True}
            r = await c.post(url + "/generate", json=body)
            assert r.status_code == 200, r.text
            alone.append(r.json()["output_token_ids"])
        out["alone"] = alone
        out["one"] = await _in_order(c, url)
        out["m1"] = [_metric((await c.get(url + "/metrics")).text, "tpserve_oom_steps_total")]
        await _cap_restored(c, url)
        out["down"] = await _in_order(c, url)
        out["m2"] = [_metric((await c.get(url + "/metrics")).text, "tpserve_oom_steps_total")]
        await _cap_restored(c, url)
        out["all"] = await _in_order(c, url)
        out["m3"] = [_metric((await c.get(url + "/metrics")).text, "tpserve_oom_steps_total")]
        out["health"] = [(await c.get(url + "/health")).json()]
    return out


def check(out: dict[str, list]) -> None:
    alone = out["alone"]
    # 1:4:1 -> every request 200, the same tokens as alone
    assert [r.status_code for r in out["one"]] == [200] * 4, [r.text for r in out["one"]]
    assert [r.json()["output_token_ids"] for r in out["one"]] == alone
    assert out["m1"] == [1.0]
    # 1:4:4 -> the two newest 503 + Retry-After, the two oldest their answers
    down = out["down"]
    assert [r.status_code for r in down] == [200, 200, 503, 503], [r.text for r in down]
    assert [r.json()["output_token_ids"] for r in down[:2]] == alone[:2]
    for r in down[2:]:
        assert r.headers.get("retry-after") and "out of GPU memory" in r.json()["error"]["message"]
    assert out["m2"] == [5.0]
    # *:4:1:before -> every request 200, the same tokens
    assert [r.status_code for r in out["all"]] == [200] * 4, [r.text for r in out["all"]]
    assert [r.json()["output_token_ids"] for r in out["all"]] == alone
    # the "before" fault fires only when the four requests share a step of >= 4 rows; on a loaded CI
    # machine they once did not (m3 stayed 5.0): the tokens above are checked either way
    assert out["m3"] in ([5.0], [6.0]), out["m3"]
    health = out["health"][0]
    assert health["status"] == "ok" and len(health["ranks"]) == 2


FAULT_SPEC = "1:4:1,1:4:4,*:4:1:before"


def test_oom_on_one_rank_keeps_the_group_serving(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import launched

    monkeypatch.setenv("TPSERVE_TEST_FAULT_OOM", FAULT_SPEC)
    log = tmp_path / "server.log"
    with launched(model_dir, log, extra=("--max-batch-size", "4")) as srv:
        out = asyncio.run(phases(srv.base_url))
    check(out)
    text = log.read_text(errors="replace")
    assert "TEST FAULT INJECTION" in text and "freed, recomputed, at most 2 per step" in text
    assert "ends with 503" in text


if __name__ == "__main__":  # against a server started with TPSERVE_TEST_FAULT_OOM=FAULT_SPEC
    import json
    import sys

    result = asyncio.run(phases(sys.argv[1]))
    summary = {k: [getattr(r, "status_code", r) for r in v] for k, v in result.items()}
    print(json.dumps(summary, default=str)[:4000])
    check(result)
    print("OOM phases: PASS")
