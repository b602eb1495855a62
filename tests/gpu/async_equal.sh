#!/usr/bin/env bash
# Asynchronous scheduling: device-fed greedy tokens == host-fed, and ms per step both ways (TP=1, 7B shape)
# device tool, kind nvidia-h200 (or -x2), carry .whl:  bash tests/gpu/async_equal.sh
set -u
cd "$(dirname "$0")/../.." || exit 1
R=/tmp/async; SHAPE=qwen2.5-7b
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
py_check tests/gpu/async_equal.py 300 "$R/async_equal.txt"
grep -q '"first_mismatch": null' "$R/async_equal.txt"
