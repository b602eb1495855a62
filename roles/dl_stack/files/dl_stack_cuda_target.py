#!/usr/bin/env python3
"""Print what FastGen's ops on this node are (to be) built for, as one JSON object.

{"deepspeed": "0.19.8", "torch": "2.13.0+cu130", "arch": "8.6"} -- the arch is TPSERVE_CUDA_ARCH
when set, else this node's GPUs as torch reports them, in both cases made plain major.minor by
tpserve.tools.prebuild (the very function the build uses). On failure {"error": "..."}; exit 0
so that Ansible can name the node and the variable to set.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata


def main() -> int:
    try:
        from tpserve.tools.prebuild import cuda_arch, plain_arch

        arch = plain_arch(os.environ.get("TPSERVE_CUDA_ARCH") or cuda_arch())
        result: dict[str, str] = {
            "deepspeed": metadata.version("deepspeed"),
            "torch": metadata.version("torch"),
            "arch": arch,
        }
    except Exception as exc:  # reported, not raised: the caller asserts with a message
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
