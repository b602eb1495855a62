"""The reference walkthrough's run-once app.py, for an operator who checks a node by hand: load the
model under the DeepSpeed launcher (every rank shards and runs every step), generate one answer,
print the prompt, the response and the generation time, and exit.

    deepspeed --num_gpus 1 --module tpserve.tools.oneshot --model /opt/tpserve/models/qwen2.5-7b \\
        --prompt "What is tensor parallelism?"
    # CPU: DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module tpserve.tools.oneshot --model DIR
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from pathlib import Path

from tpserve.config import ServeConfig
from tpserve.frontend.schemas import REFERENCE_MAX_NEW_TOKENS, REFERENCE_SYSTEM_PROMPT

DEFAULT_PROMPT = "Explain tensor parallelism in two sentences."


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tpserve.tools.oneshot", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF model directory")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--system-prompt", default=REFERENCE_SYSTEM_PROMPT, help='"" for none')
    p.add_argument("--max-new-tokens", type=int, default=REFERENCE_MAX_NEW_TOKENS)
    p.add_argument("--engine", default="auto", choices=["auto", "autotp", "fastgen"])
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the launcher's
    a = p.parse_args(argv)
    if not (Path(a.model) / "config.json").is_file():
        p.error(f"--model {a.model}: no config.json there")
    if a.max_new_tokens < 1:
        p.error("--max-new-tokens must be ≥ 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    model = Path(a.model).resolve()
    cfg = ServeConfig(
        model_dir=str(model), served_model_name=model.name, engine=a.engine, dtype=a.dtype, device=a.device,
        max_new_tokens=a.max_new_tokens,
    )  # fmt: skip
    from tpserve.control.dist import dist_info_from_env

    info = dist_info_from_env()
    logging.basicConfig(
        level="WARNING", format=f"%(asctime)s rank{info.rank} %(levelname)s %(name)s: %(message)s"
    )
    from tpserve.runtime import bring_up, run_worker

    if info.rank != 0:
        return run_worker(cfg, info)  # runs every step rank 0 broadcasts, exits on its shutdown
    from tpserve.control.ranks import Watchdog
    from tpserve.core.metrics import Metrics
    from tpserve.core.request import Request
    from tpserve.core.sampling import SamplingParams
    from tpserve.core.scheduler import Scheduler
    from tpserve.core.service import Service

    service = Service(cfg, info.world_size)
    service.load_tokenizer()
    t_load = time.monotonic()
    engine, channel, name, reason, _ = bring_up(cfg, info)
    load_s = time.monotonic() - t_load
    sched = Scheduler(
        engine, channel, service.decode, service.eos_ids, Metrics(), cfg.max_batch_size,
        cfg.heartbeat_interval_s, Watchdog(cfg.step_timeout_s), cfg.max_batch_tokens or None,
    )  # fmt: skip
    loop_thread = threading.Thread(target=sched.run, name="tpserve-engine", daemon=True)
    loop_thread.start()
    messages = [{"role": "system", "content": a.system_prompt}] if a.system_prompt else []
    messages.append({"role": "user", "content": a.prompt})
    ids = service.encode_chat(messages)

    async def generate() -> tuple[str, str, int]:
        req = Request(
            ids,
            SamplingParams(max_new_tokens=a.max_new_tokens),
            cfg.request_timeout_s,
            asyncio.get_running_loop(),
        )
        sched.submit(req)
        text = []
        while True:
            ev = await req.events.get()
            text.append(ev.text)
            if ev.final:
                return "".join(text), ev.finish_reason or "", ev.completion_tokens

    t0 = time.monotonic()
    text, finish, n = asyncio.run(generate())
    took = time.monotonic() - t0
    sched.request_shutdown()
    loop_thread.join(timeout=60)
    print(f"Engine: {name} ({reason}), {info.world_size} rank(s), loaded in {load_s:.1f} s")
    print(f"Prompt: {a.prompt}")
    print(f"Response: {text}")
    print(f"Generation time: {took:.2f} s ({n} tokens, {finish})")
    sys.stdout.flush()
    return 0 if finish in ("stop", "length") else 1


if __name__ == "__main__":
    sys.exit(main())
