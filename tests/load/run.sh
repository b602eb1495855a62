#!/usr/bin/env bash
# make load: two runs of LOAD_REQUESTS (500) requests at LOAD_CONCURRENCY (32) clients against the
# lab service (serve.yml done), every request answered (200, or 429/503 + Retry-After), p50/p99 and
# the count by status printed; rank 0's RSS measured before, between and after the runs must not
# grow by more than LOAD_RSS_TOLERANCE_MIB between the end of run 1 and the end of run 2 (run 1
# warms allocator pools and caches; a leak shows as growth in run 2).
#
#   LAB_INVENTORY=/tmp/q-inv tests/load/run.sh
#
# Output: reports/load/run-1.json, run-2.json, summary.json (+ a table on stdout).
set -euo pipefail
TEST_NAME=load
# shellcheck source=tests/chaos/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../chaos/lib.sh"
cd "${REPO}"

REQUESTS=${LOAD_REQUESTS:-500}
CONCURRENCY=${LOAD_CONCURRENCY:-32}
MAX_TOKENS=${LOAD_MAX_TOKENS:-16}
CLIENT_TIMEOUT=${LOAD_CLIENT_TIMEOUT:-300}
RSS_TOLERANCE_MIB=${LOAD_RSS_TOLERANCE_MIB:-64}
MODEL=${TPSERVE_MODEL_NAME:-tiny-qwen2-synthetic}
OUT=${LOAD_REPORT_DIR:-reports/load}
mkdir -p "${OUT}"

say "API ${API_URL} (master ${MASTER}), ${REQUESTS} requests x 2 at ${CONCURRENCY} clients"
health_ok || die "${API_URL}/health is not ok: run serve.yml first"

rss=()
v=$(rank0_rss_kib) || die "cannot read rank 0's RSS on ${MASTER}"
rss+=("${v}")
for run in 1 2; do
  say "run ${run}: rank 0 RSS before ${rss[-1]} KiB"
  "${PY}" tests/load/loadtest.py --url "${API_URL}" --model "${MODEL}" --requests "${REQUESTS}" \
    --concurrency "${CONCURRENCY}" --max-tokens "${MAX_TOKENS}" --timeout "${CLIENT_TIMEOUT}" \
    --json "${OUT}/run-${run}.json" || die "run ${run}: not every request was answered"
  v=$(rank0_rss_kib) || die "cannot read rank 0's RSS after run ${run}"
  rss+=("${v}")
done

rc=0
"${PY}" - "${OUT}" "${RSS_TOLERANCE_MIB}" "${rss[@]}" <<'EOF' || rc=$?
import json, sys
out, tol, rss = sys.argv[1], float(sys.argv[2]), [int(x) for x in sys.argv[3:]]
runs = [json.load(open(f"{out}/run-{i}.json")) for i in (1, 2)]
growth = (rss[2] - rss[1]) / 1024
summary = {"runs": runs, "rank0_rss_kib": {"before": rss[0], "after_run1": rss[1], "after_run2": rss[2]},
           "rss_growth_run2_mib": round(growth, 1), "rss_tolerance_mib": tol, "ok": growth <= tol}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(f"{'run':>4} {'requests':>8} {'conc':>5} {'failed':>6} {'p50 s':>7} {'p99 s':>7} {'wall s':>7}  by status")
for i, r in enumerate(runs, 1):
    print(f"{i:>4} {r['requests']:>8} {r['concurrency']:>5} {r['failed']:>6} {r['p50_s']:>7} {r['p99_s']:>7}"
          f" {r['wall_s']:>7}  {r['by_status']}")
print(f"rank 0 RSS MiB: before {rss[0]/1024:.1f}, after run 1 {rss[1]/1024:.1f}, after run 2 {rss[2]/1024:.1f}"
      f" (growth in run 2 {growth:+.1f} MiB, tolerance {tol:.0f})")
sys.exit(0 if growth <= tol else 1)
EOF
((rc == 0)) || die "rank 0 RSS grew beyond ${RSS_TOLERANCE_MIB} MiB in the second run"
say "passed (${OUT}/summary.json)"
