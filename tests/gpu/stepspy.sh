#!/usr/bin/env bash
# Where each rank's step time goes in the fastgen TP=2 service (issue 13; session 8's diagnostic): a
# server with TPSERVE_WORKER_STATS=500 (rank 1 logs its wait / run / report per step), 1 then 64
# clients, /metrics around each (rank 0's step phases: phases.txt) and py-spy on every process of the
# group during the 1-client load (pyspy.txt: inclusive samples per function, top 30 per process),
# and each rank's GPU timeline over 100 steps of the 1-client load (TPSERVE_PROFILE, steps
# 1000-1099: stepprofile-rank<R>.json: busy / idle ms per step, the longest idle gaps and what
# ran on both sides of them; PROFILE=START:COUNT:DIR to move the window).
#   device tool, kind nvidia-h200-x2, carry .whl WITH a py-spy wheel (pip download py-spy):
#   bash tests/gpu/run.sh stepspy          (~5 min on a fresh machine, ~1 min warm)
set -u
cd "$(dirname "$0")/../.." || exit 1
R=${OUT:-/tmp/stepspy}; SHAPE=qwen2.5-7b
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
SPY=/tmp/site/bin/py-spy
[ -x "$SPY" ] || echo "no py-spy in /tmp/site/bin (put its wheel in .whl/): the profile is skipped"
TPSERVE_PROFILE=${PROFILE:-1000:100:$R} TPSERVE_WORKER_STATS=500 setsid python3 -m deepspeed.launcher.runner --num_gpus 2 --master_port 8012 --module tpserve \
  --model "$MODEL_DIR" --served-model-name m --engine fastgen --tp-size 2 --port 8011 --host 127.0.0.1 \
  --max-batch-size 64 --max-queue 512 > "$R/server.log" 2>&1 &
L=$!
for i in $(seq 150); do curl -sf localhost:8011/health > /dev/null && break; sleep 1; done; echo "ready after $i s"
LG=(python3 bench/loadgen.py --url http://127.0.0.1:8011 --model m --prompt-tokens 128 --output-tokens 128 --timeout 60)
timeout 60 "${LG[@]}" --concurrency 1 --requests 4 > /dev/null
curl -s localhost:8011/metrics > "$R/metrics-0.txt"
[ -x "$SPY" ] && { timeout 40 "$SPY" record --subprocesses --nonblocking --pid "$L" -d 8 -r 500 -f raw -o "$R/spy.raw" \
  > "$R/spy.log" 2>&1 & }
sleep 1.5
timeout 60 "${LG[@]}" --concurrency 1 --requests 12 --tag c1 --out "$R/load.jsonl" > /dev/null
curl -s localhost:8011/metrics > "$R/metrics-1.txt"
sleep 8
timeout 60 "${LG[@]}" --concurrency 64 --requests 256 --tag c64 --out "$R/load.jsonl" > /dev/null
curl -s localhost:8011/metrics > "$R/metrics-2.txt"
sleep 3
kill -- -"$L"; sleep 3; kill -9 -- -"$L" 2> /dev/null
grep -a "rank 1: .* steps" "$R/server.log" | tee "$R/rank1.txt"
python3 - "$R" <<'PY'
import collections, json, re, sys
R = sys.argv[1]
def phases(path):
    out = {}
    for line in open(path):
        if line.startswith(("tpserve_step_seconds_total", "tpserve_engine_steps")):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out
snaps = [phases(f"{R}/metrics-{i}.txt") for i in range(3)]
with open(f"{R}/phases.txt", "w") as fh:
    for (a, b), name in zip(((snaps[0], snaps[1]), (snaps[1], snaps[2])), ("1 client", "64 clients")):
        steps = next(b[k] - a.get(k, 0) for k in b if k.startswith("tpserve_engine_steps"))
        cells = ", ".join(
            re.search(r'phase="(\w+)"', k).group(1) + " %.3f" % ((b[k] - a.get(k, 0)) * 1000 / steps)
            for k in b if k.startswith("tpserve_step_seconds_total"))
        print(f"rank 0, mean ms per step, {name}: {int(steps)} steps: {cells}", file=fh)
print(open(f"{R}/phases.txt").read(), end="")
for line in open(f"{R}/load.jsonl"):
    row = json.loads(line)
    print(row["tag"], "ITL mean", row["itl_ms_mean"], "ms, tok/s", row["output_tok_per_s"])
try:
    lines = open(f"{R}/spy.raw").read().splitlines()
except OSError:
    sys.exit(0)
per = collections.defaultdict(collections.Counter)
for line in lines:
    stack, _, n = line.rpartition(" ")
    frames = stack.split(";")
    procs = [f for f in frames if f.startswith("process ")]
    funcs = {f[:120] for f in frames if not f.startswith(("process ", "thread "))}
    for f in funcs:
        per[procs[-1][:60] if procs else "?"][f] += int(n)
with open(f"{R}/pyspy.txt", "w") as fh:
    for proc, counter in per.items():
        total = max(counter.values())
        print(f"\n## {proc}: {total} samples", file=fh)
        for f, c in counter.most_common(30):
            print(f"{c:6d} {100 * c / total:5.1f}% {f}", file=fh)
print(f"py-spy summary: {R}/pyspy.txt")
PY
python3 - "$R" <<'PY'
import glob, json, sys
for path in sorted(glob.glob(f"{sys.argv[1]}/stepprofile-rank*.json")):
    p = json.load(open(path))
    print(f"rank {p['rank']} steps {p['first_step']}+{p['steps']}: wall {p['wall_ms_per_step']} ms/step, GPU busy "
          f"{p.get('busy_ms_per_step')}, idle {p.get('idle_ms_per_step')}, gaps > 10 us {p.get('idle_gaps_over_10us')}")
    for g in p.get("longest_gaps", [])[:6]:
        print(f"   {g['us']:8.1f} us idle after {g['after']} / before {g['before']}")
PY
