"""`python -m tpserve.tools.plan`: which engine serves this model on this cluster, and why, as JSON, from
the app's one support table (tpserve.engines.support). serve.yml runs it on the master before any
unit is written; exit 2 with the reason when no engine can serve the model as configured.

    python -m tpserve.tools.plan --model-dir DIR --accelerator cuda --engine auto [--compute-capability 8.6]
    -> {"engine": "fastgen", "reason": "...", "architecture": "...", "model_type": "...", "problem": null}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tpserve.engines import support


def parse_cc(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor.rstrip("abf") or 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tpserve.tools.plan", description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--accelerator", choices=["cuda", "cpu"], required=True)
    ap.add_argument("--engine", default="auto", choices=["auto", *support.ENGINE_NAMES])
    ap.add_argument("--compute-capability", default="", help='e.g. "8.6"; "" = not known here')
    a = ap.parse_args(argv)
    config = json.loads((Path(a.model_dir) / "config.json").read_text())
    config = config.get("text_config", config) | {k: v for k, v in config.items() if k == "architectures"}
    engine, reason, problem = support.choose(a.engine, config, a.accelerator, parse_cc(a.compute_capability))
    print(json.dumps({
        "engine": engine, "reason": reason, "architecture": support.architecture(config),
        "model_type": config.get("model_type"), "problem": problem,
    }))  # fmt: skip
    if problem:
        print(f"tpserve.tools.plan: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
