#!/usr/bin/env python3
"""Download a model into a directory from the Hugging Face Hub (or a mirror) or ModelScope.

    model_fetch.py hf REPO_ID REVISION DIR [--allow PATTERN ...]
    model_fetch.py modelscope MODEL_ID REVISION DIR [--allow PATTERN ...]

Credentials and mirrors come from the environment only (HF_TOKEN_PATH or HF_TOKEN, HF_ENDPOINT,
MODELSCOPE_DOMAIN, proxies), never from argv. Both hubs resume partial downloads and skip
files already present. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def fetch_hf(repo_id: str, revision: str, target: str, allow: list[str]) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(
        repo_id=repo_id,
        revision=revision,
        local_dir=target,
        allow_patterns=allow or None,
        max_workers=4,
    )


def fetch_modelscope(model_id: str, revision: str, target: str, allow: list[str]) -> str:
    from modelscope import snapshot_download

    return snapshot_download(
        model_id, revision=revision, local_dir=target, allow_patterns=allow or None
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("hub", choices=["hf", "modelscope"])
    parser.add_argument("model_id")
    parser.add_argument("revision")
    parser.add_argument("dir")
    parser.add_argument("--allow", action="append", default=[])
    args = parser.parse_args()
    started = time.monotonic()
    fetch = fetch_hf if args.hub == "hf" else fetch_modelscope
    path = fetch(args.model_id, args.revision, args.dir, args.allow)
    print(
        json.dumps(
            {
                "hub": args.hub,
                "model_id": args.model_id,
                "revision": args.revision,
                "path": str(path),
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
