"""GPU smoke test of a live tpserve (run by tests/gpu/smoke.sh): sharding, HF-equal greedy tokens,
batched concurrent requests equal to their answers alone, streaming. Prints one JSON report."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

URL, MODEL = sys.argv[1], sys.argv[2]


def call(path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        URL + path, data=data, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def gen(prompt: str, n: int = 24) -> list[int]:
    return call("/generate", {"prompt": prompt, "max_new_tokens": n})["output_token_ids"]


report: dict = {"health": call("/health")}
tok = AutoTokenizer.from_pretrained(MODEL)
ref_model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).cuda().eval()
eos = [tok.eos_token_id, tok.pad_token_id]
equal = []
PROMPTS = ("你好，请介绍一下你自己。", "Tell me a story.", "1 2 3 4")  # noqa: RUF001  # the walkthrough's prompt
for prompt in PROMPTS:
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)]).cuda()
    out = ref_model.generate(
        ids, max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=eos[1]
    )
    ref = [t for t in out[0, ids.shape[1] :].tolist() if t not in eos]
    equal.append(gen(prompt) == ref)
report["greedy_equal_hf"] = equal
prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(16)]
alone = [gen(p, 32) for p in prompts]
t0 = time.monotonic()
with ThreadPoolExecutor(16) as pool:
    together = list(pool.map(lambda p: gen(p, 32), prompts))
report["concurrent16_s"] = round(time.monotonic() - t0, 3)
report["concurrent_equal_alone"] = together == alone
t0 = time.monotonic()
gen("timing", 128)
report["single_128_tokens_s"] = round(time.monotonic() - t0, 3)
print(json.dumps(report, indent=1))
ok = all(equal) and report["concurrent_equal_alone"]
ok = ok and all(
    abs(r["linear_fraction"] - 1 / len(report["health"]["ranks"])) < 0.02
    for r in report["health"]["ranks"]
)
sys.exit(0 if ok else 1)
