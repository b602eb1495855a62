#!/usr/bin/env bash
# Greedy tokens with CUDA graphs == without, the batch held fixed (engine level, TP=1, 7B shape)
# device tool, kind nvidia-h200 (or -x2), carry .whl:  bash tests/gpu/graphs_equal.sh
set -u
cd "$(dirname "$0")/../.." || exit 1
R=/tmp/graphs; SHAPE=qwen2.5-7b
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
py_check tests/gpu/graphs_equal.py 240 "$R/graphs_equal.txt"
exit 0
