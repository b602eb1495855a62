#!/usr/bin/env bash
# CUDA OOM recovery and what the per-step outcome agreement costs, fastgen TP=2 in one node (NCCL).
#   STAGES="oom itl" (default both). oom: a server with TPSERVE_TEST_FAULT_OOM (a real
#   torch.cuda.OutOfMemoryError raised inside engine.forward, app/tests/test_oom_tp2.py's three faults:
#   rank 1 after its forward; rank 1 four times down to one sequence; every rank before it), then
#   that file's client against it (oom-client.txt, oom-events.txt), on the small synthetic Qwen2 of
#   the CPU tests (its prompts are text: the 7B shape's tokenizer turns them into nothing). itl: ITL
#   at 1 client and tok/s at 64 (CUDA graphs on, 7B shape), this tree's app, and BASELINE (an app/src
#   without the agreement) if set.
#   device tool, kind nvidia-h200-x2, carry .whl:  STAGES=oom bash tests/gpu/oom.sh
#   then, warm:                                     STAGES=itl BASELINE=baseline-src bash tests/gpu/oom.sh
#   OOM_ARGS: more server flags for the oom stage (e.g. "--async-scheduling off")
set -u
cd "$(dirname "$0")/../.." || exit 1
R=${R:-/tmp/oom}; SHAPE=qwen2.5-7b
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
# shellcheck source=tests/gpu/serve_lib.sh
source tests/gpu/serve_lib.sh
ARGS=(--model "$MODEL_DIR" --served-model-name m --engine fastgen --dtype bfloat16)
rc=0
for stage in ${STAGES:-oom itl}; do
  case $stage in
    oom)
      echo "== oom faults ${OOM_ARGS:-}"
      read -ra extra <<< "${OOM_ARGS:-}"
      python3 -m tpserve.tools.synthetic /tmp/tiny --hidden 1024 --intermediate 2816 --layers 4 --heads 8 \
        --kv-heads 4 > /dev/null 2>&1
      TPSERVE_TEST_FAULT_OOM="1:4:1,1:4:4,*:4:1:before" setsid python3 -m deepspeed.launcher.runner \
        --include localhost:0,1 --master_port 29061 --module tpserve --model /tmp/tiny --engine fastgen \
        --dtype bfloat16 --max-batch-size 4 --port 8061 "${extra[@]}" > "$R/oom-server.log" 2>&1 &
      pids+=($!)
      wait_ready 8061
      timeout 300 python3 app/tests/test_oom_tp2.py http://127.0.0.1:8061 > "$R/oom-client.txt" 2>&1 || rc=1
      tail -n 5 "$R/oom-client.txt"
      grep -E "out of memory|TEST FAULT|Error|error" "$R/oom-server.log" | tail -n 30 > "$R/oom-events.txt"
      cat "$R/oom-events.txt"
      stop_all
      ;;
    itl)
      src_new=$PWD/app/src
      for label in agree ${BASELINE:+base}; do
        src=$src_new
        [ "$label" = base ] && src=$PWD/$BASELINE
        echo "== $label ($src)"
        PYTHONPATH="$src:${PYTHONPATH#*:}" setsid python3 -m deepspeed.launcher.runner --include localhost:0,1 \
          --master_port 29062 --module tpserve "${ARGS[@]}" --max-batch-size 64 --max-queue 512 --port 8062 \
          > "$R/$label.log" 2>&1 &
        pids+=($!)
        wait_ready 8062
        tokens "$label" 8062
        load "$label" 1 8062; load "$label" 64 8062
        stop_all
      done
      summary "agree and base" | tee "$R/summary.txt"
      ;;
    *) echo "unknown stage $stage"; rc=1 ;;
  esac
done
[ -n "${OUT:-}" ] && cp "$R"/*.txt "$R"/*.log "$OUT"/ 2>/dev/null
exit $rc
