"""One benchmark phase per process (runner.py starts them; some under the DeepSpeed launcher).

Fixed-length greedy decode on a random-weight model built from a shipped config: prompt
PROMPT random tokens, NEW new tokens, EOS never stops it. Per batch size:
  ms/token = (time(NEW new) - time(1 new)) / (NEW - 1);  tok/s = bs * NEW / time(NEW new).
Median of REPS timed runs after one warm-up. Each phase appends JSON lines to RESULTS/phases.jsonl.

Phases: env, save, hf, hfc, ds, v2, fastgen, profile (where a decode step's time goes: GPU kernel
time by kind per step under torch.profiler, tpserve's FastGenEngine with CUDA graphs).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PHASE = next(a for a in sys.argv[1:] if not a.startswith("--local_rank"))
RESULTS = Path(os.environ.get("RESULTS", "/tmp/bench"))
MODEL_DIR = os.environ.get("MODEL_DIR", "/tmp/bench-model")
CONFIG = os.environ.get("BENCH_CONFIG", str(Path(__file__).parent / "configs" / "qwen2.5-7b.json"))
RANK = int(os.environ.get("RANK", "0"))
LOCAL_RANK = int(os.environ.get("LOCAL_RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
PROMPT = int(os.environ.get("PROMPT", "128"))
NEW = int(os.environ.get("NEW", "128"))
REPS = int(os.environ.get("REPS", "3"))
BATCHES = [int(b) for b in os.environ.get("BS", "1 32 64").split()]
TAG = os.environ.get("TAG", PHASE)


def log(**kw: Any) -> None:
    kw = {"phase": PHASE, "tag": TAG, "world": WORLD, **kw}
    line = json.dumps(kw)
    print(line, flush=True)
    if RANK == 0:
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(RESULTS / "phases.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def prompts(bs: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234 + bs)
    return torch.randint(100, vocab - 100, (bs, PROMPT), generator=g)


def timed(fn: Callable[[int], Any]) -> tuple[float, float, Any]:
    """(median time of 1 new token, median time of NEW new tokens, last output)."""
    fn(NEW)  # warm-up
    t1s, tns, out = [], [], None
    for _ in range(REPS):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn(1)
        torch.cuda.synchronize()
        t1s.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = fn(NEW)
        torch.cuda.synchronize()
        tns.append(time.perf_counter() - t)
    return statistics.median(t1s), statistics.median(tns), out


def report(bs: int, t1: float, tn: float, **extra: Any) -> None:
    log(
        stage="generate",
        bs=bs,
        prefill_s=round(t1, 4),
        total_s=round(tn, 4),
        ms_per_token=round((tn - t1) / (NEW - 1) * 1000, 3),
        tok_per_s=round(bs * NEW / tn, 1),
        **extra,
    )


def hf_config() -> Any:
    import tempfile

    from transformers import AutoConfig

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(Path(CONFIG).read_text())
        return AutoConfig.from_pretrained(tmp)


def build_hf(device: str) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(), dtype=torch.bfloat16)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


# -- phases ----------------------------------------------------------------------------------
def phase_env() -> None:
    import transformers

    try:
        import deepspeed

        ds = deepspeed.__version__
    except Exception as exc:
        ds = f"missing: {exc}"
    x = torch.empty(2**31, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 2 * 2**31 * 20 / (time.perf_counter() - t) / 1e12
    log(
        stage="env",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        transformers=transformers.__version__,
        deepspeed=ds,
        gpu=torch.cuda.get_device_name(0),
        n_gpu=torch.cuda.device_count(),
        cc=".".join(map(str, torch.cuda.get_device_capability(0))),
        copy_tb_per_s=round(bw, 3),
        python=sys.version.split()[0],
    )


def phase_save() -> None:
    """Random weights from the shipped config + a word-level tokenizer (tN = token N)."""
    t = time.perf_counter()
    model = build_hf("cuda")
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    write_tokenizer(MODEL_DIR, model.config.vocab_size)
    log(
        stage="saved",
        s=round(time.perf_counter() - t, 1),
        weight_gb=round(wbytes / 1e9, 2),
        path=MODEL_DIR,
    )


def write_tokenizer(path: str, vocab_size: int) -> None:
    """Word-level tokenizer ("t17 t4" = tokens [17, 4]).

    NB: transformers' AutoTokenizer loads it as Qwen2Tokenizer (model_type qwen2), which cannot
    encode these words: loadgen sends token-id prompts; decoding ("t17") works.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {f"t{i}": i for i in range(vocab_size - len(specials))}
    vocab.update({s: vocab_size - len(specials) + k for k, s in enumerate(specials)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="t0"
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> {% endif %}"
    )
    fast.save_pretrained(path)


def hf_generate_fn(model: Any, bs: int) -> Callable[[int], Any]:
    ids = prompts(bs, model.config.vocab_size).to(model.device)
    mask = torch.ones_like(ids)

    def run(new: int) -> Any:
        with torch.no_grad():
            return model.generate(
                ids, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new
            )

    return run


def phase_hf(static: bool) -> None:
    model = build_hf(f"cuda:{LOCAL_RANK}")
    if static:
        model.generation_config.cache_implementation = "static"
    for bs in BATCHES:
        t = time.perf_counter()
        fn = hf_generate_fn(model, bs)
        t1, tn, out = timed(fn)
        assert out.shape[1] == PROMPT + NEW, out.shape
        report(
            bs,
            t1,
            tn,
            setup_and_timing_s=round(time.perf_counter() - t, 1),
            first16=out[0, PROMPT : PROMPT + 16].tolist(),
        )


def phase_ds() -> None:
    import deepspeed

    model = build_hf(f"cuda:{LOCAL_RANK}")
    t = time.perf_counter()
    engine = deepspeed.init_inference(
        model,
        tensor_parallel={"tp_size": WORLD},
        dtype=torch.bfloat16,
        replace_with_kernel_inject=False,
    )
    torch.cuda.empty_cache()
    log(
        stage="init_inference",
        s=round(time.perf_counter() - t, 2),
        params_on_rank=sum(p.numel() for p in engine.module.parameters()),
        alloc_gib=round(torch.cuda.memory_allocated() / 2**30, 2),
    )
    for bs in BATCHES:
        t1, tn, out = timed(hf_generate_fn(engine.module, bs))
        report(bs, t1, tn, first16=out[0, PROMPT : PROMPT + 16].tolist())


def v2_loop(
    put: Callable[[list[int], list[torch.Tensor]], torch.Tensor],
    flush: Callable[[int], None],
    bs: int,
    vocab: int,
) -> Callable[[int], Any]:
    ps = prompts(bs, vocab)
    counter = [0]

    def run(new: int) -> list[list[int]]:
        counter[0] += 1
        uids = [counter[0] * 1000 + i for i in range(bs)]
        got: list[list[int]] = [[] for _ in range(bs)]
        logits = put(uids, [ps[i] for i in range(bs)])
        nxt = logits.argmax(-1).cpu()
        for _ in range(new - 1):
            for i in range(bs):
                got[i].append(int(nxt[i]))
            logits = put(uids, [nxt[i : i + 1] for i in range(bs)])
            nxt = logits.argmax(-1).cpu()
        for i in range(bs):
            got[i].append(int(nxt[i]))
        for u in uids:
            flush(u)
        return got

    return run


def wrapped_engine(kv_blocks: int | None) -> Any:
    """tpserve's FastGenEngine as the service builds it (CUDA graphs, one-shot all-reduce on;
    ONESHOT=0: every all-reduce on NCCL, as --no-oneshot-allreduce)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app" / "src"))
    from tpserve.engines.fastgen import FastGenEngine, FastGenSettings

    return FastGenEngine(
        FastGenSettings(
            model_dir=MODEL_DIR,
            tp_size=WORLD,
            kv_cache_blocks=kv_blocks,
            max_batch_tokens=max(BATCHES) * PROMPT,
            max_batch_sequences=max(BATCHES),
            oneshot_allreduce=os.environ.get("ONESHOT", "1") != "0",
        )
    )


def phase_v2(wrapped: bool) -> None:
    t = time.perf_counter()
    kv_blocks = int(os.environ.get("KV_BLOCKS", "0")) or None
    if wrapped:
        eng = wrapped_engine(kv_blocks)
        put, flush = eng.forward, eng.release
        free = eng.free_kv_blocks
    else:
        import deepspeed
        from deepspeed.inference.v2 import RaggedInferenceEngineConfig, build_hf_engine

        deepspeed.init_distributed()
        mem = (
            {"mode": "allocate", "size": kv_blocks}
            if kv_blocks
            else {"mode": "reserve", "size": 8 * 2**30}
        )
        raw = build_hf_engine(
            MODEL_DIR,
            RaggedInferenceEngineConfig(
                tensor_parallel={"tp_size": WORLD},
                state_manager={
                    "max_tracked_sequences": 256,
                    "max_ragged_batch_size": max(BATCHES) * PROMPT,
                    "max_ragged_sequence_count": max(BATCHES),
                    "max_context": 1024,
                    "memory_config": mem,
                },
            ),
        )

        def put(uids: list[int], toks: list[torch.Tensor]) -> torch.Tensor:
            return raw.put(uids, toks, do_checks=False)

        flush = raw.flush
        free = int(raw.free_blocks[0])
    log(
        stage="v2_build",
        s=round(time.perf_counter() - t, 1),
        kv_free_blocks=free,
        alloc_gib=round(torch.cuda.memory_allocated() / 2**30, 2),
    )
    vocab = json.loads(Path(MODEL_DIR, "config.json").read_text())["vocab_size"]
    for bs in BATCHES:
        t1, tn, out = timed(v2_loop(put, flush, bs, vocab))
        report(bs, t1, tn, first16=out[0][:16])
    # Greedy tokens + first-step logits of a fixed prompt, for the TP=1 vs TP=2 comparison.
    ps = prompts(1, vocab)
    logits = put([99_999], [ps[0]]).float()
    toks = v2_loop(put, flush, 1, vocab)(32)[0]
    flush(99_999)
    if RANK == 0:
        torch.save(logits.cpu(), RESULTS / f"logits-{TAG}.pt")
    log(stage="tokens", first32=toks, top2=logits[0].topk(2).values.tolist())


def profile_batch(eng: Any, bs: int, vocab: int, steps: int) -> dict[str, Any]:
    """Decode steps of `bs` sequences: timed plain (median host hand-over and step wall), then the
    same number under torch.profiler (kernel time per step by kind)."""
    from torch.profiler import ProfilerActivity, profile

    # one owner of the kernel classification: the service's step profile (TPSERVE_PROFILE)
    from tpserve.engines.stepprofile import cuda_kernels, kernel_table

    uids = [700_000 + 1000 * bs + i for i in range(bs)]
    nxt = eng.forward(uids, list(prompts(bs, vocab))).argmax(-1).cpu()
    times: list[tuple[float, float]] = []
    # 4 steps to capture the graph of this size, then `steps` timed plain, then `steps` traced
    for k in range(4 + 2 * steps):
        if k == 4 + steps:
            prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            prof.__enter__()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = eng.forward(uids, list(nxt.view(bs, 1)))
        t1 = time.perf_counter()
        nxt = logits.argmax(-1).cpu()
        if 4 <= k < 4 + steps:
            times.append((t1 - t0, time.perf_counter() - t0))
    prof.__exit__(None, None, None)
    for u in uids:
        eng.release(u)
    return {
        "host_handover_ms": round(statistics.median(t[0] for t in times) * 1000, 4),
        "step_ms": round(statistics.median(t[1] for t in times) * 1000, 4),
        **kernel_table(cuda_kernels(prof), steps),
    }


def phase_profile() -> None:
    """Where a decode step's time goes (issue 13): tpserve's FastGenEngine with CUDA graphs, per
    batch size in BS; NCCL_NET=Socket (+ P2P/SHM off) gives the across-nodes all-reduce."""
    steps = int(os.environ.get("PROFILE_STEPS", "24"))
    eng = wrapped_engine(int(os.environ.get("KV_BLOCKS", "0")) or None)
    vocab = json.loads(Path(MODEL_DIR, "config.json").read_text())["vocab_size"]
    for bs in BATCHES:
        row = profile_batch(eng, bs, vocab, steps)
        info = eng.describe()
        log(
            stage="profile",
            bs=bs,
            steps=steps,
            nccl_net=os.environ.get("NCCL_NET", "default"),
            graph_replays=info["cuda_graphs"].get("replays"),
            allreduce=info["allreduce"],
            **row,
        )


def main() -> None:
    os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ.get("BENCH_CUDA_ARCH", "9.0")
    torch.cuda.set_device(LOCAL_RANK)
    {
        "env": phase_env,
        "save": phase_save,
        "hf": lambda: phase_hf(static=False),
        "hfc": lambda: phase_hf(static=True),
        "ds": phase_ds,
        "v2": lambda: phase_v2(wrapped=False),
        "fastgen": lambda: phase_v2(wrapped=True),
        "profile": phase_profile,
    }[PHASE]()


if __name__ == "__main__":
    main()
