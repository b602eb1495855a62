#!/usr/bin/env bash
# Monitoring on the served lab (serve.yml done; `make monitoring`, and a stage of tests/integration.sh):
#   1. the guard-rails refuse Prometheus on 0.0.0.0 (naming the key), before any change;
#   2. serve.yml -e tpserve_monitoring_enabled=true (node exporter on every node, Prometheus on the
#      master), then again: changed=0 on every host;
#   3. Prometheus and every node exporter listen on the node's cluster address only (ss on the nodes);
#   4. bounded load through the API (batches of MONITORING_LOAD_REQUESTS chat completions at
#      MONITORING_LOAD_CONCURRENCY clients, for at most MONITORING_LOAD_MAX_S seconds) while
#      tests/monitoring/dashboard_check.py sends every panel query of the Grafana dashboard
#      (roles/monitoring/files/tpserve-dashboard.json) to the lab's Prometheus: each must return data
#      (GPU-only panels are skipped on the CPU lab, with the reason printed).
#
#   MONITORING_PLAYBOOK_ARGS="-e tpserve_layout=replicas -e tpserve_tp_size=1" tests/monitoring/run.sh
#
# Talks only to the lab nodes (LAB_INVENTORY, default inventory/lab). Output: reports/monitoring/.
set -euo pipefail
TEST_NAME=monitoring
# shellcheck source=tests/chaos/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../chaos/lib.sh"
cd "${REPO}"

read -r -a ARGS <<<"${MONITORING_PLAYBOOK_ARGS:-}"
# shellcheck source=tests/monitoring/args.sh
source tests/monitoring/args.sh
MON=("${MONITORING_ARGS[@]}")
OUT=${MONITORING_REPORT_DIR:-reports/monitoring}
LOAD_REQUESTS=${MONITORING_LOAD_REQUESTS:-40}
LOAD_CONCURRENCY=${MONITORING_LOAD_CONCURRENCY:-4}
LOAD_MAX_S=${MONITORING_LOAD_MAX_S:-240}
CHECK_WAIT=${MONITORING_CHECK_WAIT:-150}
MODEL=${TPSERVE_MODEL_NAME:-tiny-qwen2-synthetic}
mkdir -p "${OUT}"
rm -f "${OUT}"/load-*.json "${OUT}"/load-*.log
t_all=${SECONDS}

# recap_ok LOG: every PLAY RECAP host line has changed=0 failed=0 unreachable=0.
recap_ok() {
  awk '/^PLAY RECAP/ { r = 1; next }
       r && /: ok=/ { n++; if ($0 !~ / changed=0 / || $0 !~ / failed=0 / || $0 !~ / unreachable=0 /) { print; bad = 1 } }
       END { exit (n == 0 || bad) }' "$1"
}
# setting EXPR: a variable as Ansible resolves it for the master with this run's arguments.
setting() {
  ansible -i "${INVENTORY}" --playbook-dir . "${MASTER}" ${ARGS[@]+"${ARGS[@]}"} "${MON[@]}" \
    -m ansible.builtin.debug -a "msg=\"{{ $1 }}\"" 2>/dev/null | sed -n 's/^ *msg: //p' | tr -d "'\""
}

say "1. guard-rails refuse monitoring_prometheus_bind_address=0.0.0.0 (no node is touched)"
if ansible-playbook -i "${INVENTORY}" ${ARGS[@]+"${ARGS[@]}"} "${MON[@]}" playbooks/guardrails.yml \
  -e monitoring_prometheus_bind_address=0.0.0.0 >"${OUT}/refuse-expose.log" 2>&1; then
  die "guard-rails accepted Prometheus on 0.0.0.0 (${OUT}/refuse-expose.log)"
fi
if ! grep -q "monitoring_prometheus_bind_address=0.0.0.0" "${OUT}/refuse-expose.log" ||
  ! grep -q "monitoring_expose_beyond_cluster" "${OUT}/refuse-expose.log"; then
  die "the refusal does not name the key and the way out: ${OUT}/refuse-expose.log"
fi
say "refused, naming monitoring_prometheus_bind_address and monitoring_expose_beyond_cluster"

if [[ ${MONITORING_SERVED:-0} == 1 ]]; then
  # tests/integration.sh served this layout with MONITORING_ARGS twice and checked changed=0
  say "2. serve.yml with monitoring: done by the caller (twice, changed=0 the second time)"
else
  say "2. serve.yml with monitoring (log ${OUT}/serve-1.log)"
  t0=${SECONDS}
  ansible-playbook -i "${INVENTORY}" ${ARGS[@]+"${ARGS[@]}"} "${MON[@]}" serve.yml >"${OUT}/serve-1.log" 2>&1 ||
    { tail -n 40 "${OUT}/serve-1.log"; die "serve.yml with monitoring failed (${OUT}/serve-1.log)"; }
  t_first=$((SECONDS - t0))
  grep -o '[0-9]* targets up at [^"]*' "${OUT}/serve-1.log" | tail -n 1 || true
  t0=${SECONDS}
  ansible-playbook -i "${INVENTORY}" ${ARGS[@]+"${ARGS[@]}"} "${MON[@]}" serve.yml >"${OUT}/serve-2.log" 2>&1 ||
    { tail -n 40 "${OUT}/serve-2.log"; die "serve.yml with monitoring, second run, failed"; }
  t_second=$((SECONDS - t0))
  recap_ok "${OUT}/serve-2.log" || die "serve.yml with monitoring, second run: not changed=0 (${OUT}/serve-2.log)"
  say "serve.yml with monitoring: ${t_first}s; again ${t_second}s with changed=0 on every host"
fi

say "3. listening on the cluster address only"
# The role's default ports (role defaults are not visible to an ad-hoc `ansible`).
prom_port=${MONITORING_PROMETHEUS_PORT:-9090}
ne_port=${MONITORING_NODE_EXPORTER_PORT:-9100}
layout=$(setting tpserve_layout)
accel=$(setting tpserve_accelerator)
[[ -n ${prom_port} && -n ${ne_port} && -n ${layout} && -n ${accel} ]] || die "could not resolve the settings"
for n in "${MASTER}" "${WORKERS[@]}"; do
  a=$(addr_of "${n}")
  listen=$(node_sh "${n}" "ss -Hltn" | awk '{print $4}')
  grep -qx "${a}:${ne_port}" <<<"${listen}" || die "${n}: node exporter not on ${a}:${ne_port}: ${listen//$'\n'/ }"
  ! grep -qE "^(\*|0\.0\.0\.0|\[::\]):(${ne_port}|${prom_port})$" <<<"${listen}" ||
    die "${n}: a monitoring port listens on every address: ${listen//$'\n'/ }"
done
listen=$(node_sh "${MASTER}" "ss -Hltn" | awk '{print $4}')
grep -qx "${MASTER_ADDR}:${prom_port}" <<<"${listen}" || die "Prometheus not on ${MASTER_ADDR}:${prom_port}"
say "Prometheus on ${MASTER_ADDR}:${prom_port} only; node exporters on each node's address, port ${ne_port}"

say "4. bounded load (${LOAD_REQUESTS} requests x ${LOAD_CONCURRENCY} clients per batch, <= ${LOAD_MAX_S}s) + every dashboard query"
health_ok || die "${API_URL}/health is not ok"
stop=${OUT}/.stop-load
rm -f "${stop}"
(
  t=${SECONDS} b=0
  while [[ ! -f ${stop} ]] && ((SECONDS - t < LOAD_MAX_S)); do
    b=$((b + 1))
    "${PY}" tests/load/loadtest.py --url "${API_URL}" --model "${MODEL}" --requests "${LOAD_REQUESTS}" \
      --concurrency "${LOAD_CONCURRENCY}" --max-tokens 16 --timeout 60 --json "${OUT}/load-${b}.json" \
      >"${OUT}/load-${b}.log" 2>&1 || echo "load batch ${b} had failures (${OUT}/load-${b}.log)" >&2
  done
) &
load_pid=$!
stop_load() {
  touch "${stop}"
  wait "${load_pid}" 2>/dev/null || true
}
trap stop_load EXIT
sleep 15 # two scrapes with load in them
rc=0
"${PY}" tests/monitoring/dashboard_check.py --prometheus "http://${MASTER_ADDR}:${prom_port}" \
  --dashboard roles/monitoring/files/tpserve-dashboard.json --accelerator "${accel}" --layout "${layout}" \
  --rate-interval 1m --wait "${CHECK_WAIT}" --json "${OUT}/dashboard-check.json" || rc=$?
stop_load
trap - EXIT
"${PY}" - "${OUT}" <<'PY'
import glob, json, sys
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{sys.argv[1]}/load-*.json"))]
total = sum(r["requests"] for r in runs)
failed = sum(r["failed"] for r in runs)
print(f"load during the check: {len(runs)} batches, {total} requests, {failed} failed")
PY
((rc == 0)) || die "dashboard queries without data (${OUT}/dashboard-check.json)"
say "passed in $((SECONDS - t_all))s (${OUT}/dashboard-check.json)"
