#!/usr/bin/env bash
# make chaos: faults injected into the running lab service (site.yml + serve.yml done), each timed.
#
#   LAB_INVENTORY=/tmp/q-inv tests/chaos/run.sh [SCENARIO...]
#
# Scenarios (default: all, in this order):
#   kill-rank      kill -9 of the rank on the last worker: systemd restarts the group, /health ok
#                  again within CHAOS_RECOVERY_LIMIT (120 s); in-flight streams end (error), none
#                  hangs; smoketest.yml passes after.
#   corrupt-model  one byte of the last worker's model.safetensors flipped in place (size and mtime
#                  kept): site.yml --tags model -e model_verify=deep (the on-demand deep check; the
#                  default quick one trusts size + mtime) sees it (rsync --checksum) and repairs it (sha256
#                  equal to the master's again), health ok.
#   master-reboot  podman restart of the master: the service is back without Ansible.
#   worker-down    podman stop of the last worker: serve.yml and smoketest.yml fail fast naming
#                  it; podman start, then serve.yml restores the service.
#   replicas       serve.yml with tpserve_layout=replicas tpserve_tp_size=1; the last worker
#                  stopped; once the front door (HAProxy) marks it down, CHAOS_REPLICA_REQUESTS
#                  requests -> 0 failed, none sent to it; worker started, layout restored (serve.yml).
#   rolling-restart  replicas layout; serve.yml applies a serving-variable change
#                  (tpserve_max_batch_size=CHAOS_ROLLING_BATCH_SIZE) while load runs in batches of
#                  CHAOS_ROLLING_BATCH requests (at most CHAOS_ROLLING_MAX_BATCHES): every replica
#                  restarted one at a time, 0 requests lost (every answer 200, none 503).
#   security       tests/security/check.sh all (live checks + Vault secrets, see there).
#   partition      (tp_across_nodes) a firewall DROP between the master and the last worker, both
#                  ways, inside the worker's network namespace, while a stream is in flight: the
#                  stream ends with an error <= CHAOS_PARTITION_LIMIT (35 s) after the DROP (the row
#                  says how: sse-error+done = an SSE error event naming why, then [DONE]; cut), /health
#                  answers 503 <= CHAOS_PARTITION_LIMIT; DROP removed, serving again (chat
#                  completion) <= CHAOS_RECOVERY_LIMIT (120 s) after that.
#   partition-idle the same DROP with nothing in flight: /health answers 503 (stall_reason: the ranks
#                  have not answered the heartbeat) <= CHAOS_PARTITION_LIMIT, then the group exits;
#                  DROP removed, serving again <= CHAOS_RECOVERY_LIMIT.
#   model-quota    the last worker's model versions directory on a tmpfs with ~1 MiB free; a new
#                  model source (model_synthetic_args --seed CHAOS_QUOTA_SEED) by site.yml --tags
#                  model fails naming the worker and the space; every node's model symlink is
#                  unchanged, /health ok and /generate answers on the old model; tmpfs removed.
#
# Logs: reports/chaos/*.log; summary table: reports/chaos/summary.txt (and stdout).
set -euo pipefail
TEST_NAME=chaos
# shellcheck source=tests/chaos/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${REPO}"

LOGS=${CHAOS_REPORT_DIR:-reports/chaos}
RECOVERY_LIMIT=${CHAOS_RECOVERY_LIMIT:-120}
FAIL_FAST_LIMIT=${CHAOS_FAIL_FAST_LIMIT:-180}
REPLICA_REQUESTS=${CHAOS_REPLICA_REQUESTS:-100}
FRONT_DOOR_STATS_PORT=${TPSERVE_FRONT_DOOR_STATS_PORT:-8404}
ROLLING_BATCH=${CHAOS_ROLLING_BATCH:-100}
ROLLING_MAX_BATCHES=${CHAOS_ROLLING_MAX_BATCHES:-100}
ROLLING_BATCH_SIZE=${CHAOS_ROLLING_BATCH_SIZE:-7}
MODEL=${TPSERVE_MODEL_NAME:-tiny-qwen2-synthetic}
VICTIM=${WORKERS[-1]}
mapfile -t ALL_NODES < <(hosts_of tpserve)
mkdir -p "${LOGS}"
rows=()
failed=0
row() { # row SCENARIO RESULT SECONDS DETAIL
  rows+=("$(printf '| %-14s | %-4s | %7s | %s |' "$1" "$2" "$3" "$4")")
  [[ $2 == PASS ]] || failed=$((failed + 1))
  say "$1: $2 ($3 s) $4"
}

# wait_unhealthy SECONDS: until /health stops answering ok (the fault has been noticed).
wait_unhealthy() {
  local t0=${SECONDS}
  while ((SECONDS - t0 < $1)); do
    health_ok || return 0
    sleep 0.5
  done
  return 1
}

wait_ssh() { # wait_ssh HOST SECONDS
  local t0=${SECONDS}
  while ((SECONDS - t0 < $2)); do
    node_sh "$1" true 2>/dev/null && return 0
    sleep 1
  done
  return 1
}

ensure_serving() {
  health_ok && return 0
  say "service not healthy: serve.yml"
  playbook "${LOGS}/serve-ensure.log" serve.yml || die "serve.yml failed (${LOGS}/serve-ensure.log)"
}

scenario_kill_rank() {
  ensure_serving
  local started=${LOGS}/inflight.started pid t0 t_down rec restarts0 restarts1 inflight m0 m1
  rm -f "${started}"
  restarts0=$(node_sh "${VICTIM}" "systemctl show tpserve -p NRestarts --value")
  # the whole group restarts, not only the victim's unit (the survivors fail at their next
  # collective): the master's unit too (this check was tests/integration.sh's until issue 16.4)
  m0=$(node_sh "${MASTER}" "systemctl show tpserve -p NRestarts --value")
  "${PY}" tests/chaos/inflight.py --url "${API_URL}" --model "${MODEL}" --n 4 --max-tokens 500 \
    --timeout 150 --started "${started}" >"${LOGS}/inflight.json" 2>"${LOGS}/inflight.err" &
  inflight=$!
  for _ in $(seq 120); do [[ -f ${started} ]] && break; sleep 0.5; done
  [[ -f ${started} ]] || {
    row kill-rank FAIL - "in-flight streams never started ($(tail -n 3 "${LOGS}/inflight.err"))"
    return
  }
  pid=$(node_sh "${VICTIM}" "pgrep -u tpserve -f -- 'tpserve.*--local_rank=' | head -n1")
  [[ -n ${pid} ]] || {
    row kill-rank FAIL - "no rank process on ${VICTIM}"
    return
  }
  t0=${SECONDS}
  node_sh "${VICTIM}" "kill -9 ${pid}"
  say "kill-rank: SIGKILL rank pid ${pid} on ${VICTIM}"
  wait_unhealthy 60 || true
  t_down=$((SECONDS - t0))
  local rc=0
  wait "${inflight}" || rc=$?
  local counts
  counts=$("${PY}" -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"])' "${LOGS}/inflight.json" 2>/dev/null || echo "?")
  if rec=$(wait_health "${RECOVERY_LIMIT}"); then rec=$((SECONDS - t0)); else rec=timeout; fi
  restarts1=$(node_sh "${VICTIM}" "systemctl show tpserve -p NRestarts --value")
  m1=$(node_sh "${MASTER}" "systemctl show tpserve -p NRestarts --value")
  # serve.yml after the recovery has nothing to change (changed=0 on every host)
  local serve=PASS
  if playbook "${LOGS}/serve-after-kill.log" serve.yml; then
    awk '/^PLAY RECAP/ { r = 1; next } r && /: ok=/ && (!/ changed=0 / || !/ failed=0 /) { bad = 1 }
      END { exit bad }' "${LOGS}/serve-after-kill.log" || serve="FAIL (changed)"
  else
    serve=FAIL
  fi
  local smoke=PASS
  playbook "${LOGS}/smoke-after-kill.log" smoketest.yml || smoke=FAIL
  if [[ ${rec} != timeout ]] && ((rec <= RECOVERY_LIMIT)) && ((rc == 0)) && [[ ${smoke} == PASS ]] &&
    [[ ${serve} == PASS ]] && ((restarts1 > restarts0)) && ((m1 > m0)) && ! grep -q "'completed': 4" <<<"${counts}"; then
    row kill-rank PASS "${rec}" "unhealthy after ${t_down}s, serving again ${rec}s after the kill; in-flight ${counts}; NRestarts ${VICTIM} ${restarts0}->${restarts1}, ${MASTER} ${m0}->${m1}; serve.yml changed=0; smoketest ${smoke}"
  else
    row kill-rank FAIL "${rec}" "in-flight ${counts} (rc ${rc}); NRestarts ${VICTIM} ${restarts0}->${restarts1}, ${MASTER} ${m0}->${m1}; serve.yml ${serve}; smoketest ${smoke}"
  fi
}

scenario_corrupt_model() {
  ensure_serving
  local dir=/opt/tpserve/models/${MODEL} f sum_master sum_before sum_after t0 rc=0 took
  f=${dir}/model.safetensors
  sum_master=$(node_sh "${MASTER}" "sha256sum ${f} | cut -d' ' -f1")
  # Flip one byte in the middle of the weights; keep size and mtime (rsync's quick check is blind).
  node_sh "${VICTIM}" "set -e; cp -p ${f} /tmp/ref; off=\$((\$(stat -c %s ${f}) / 2)); \
    b=\$(dd if=${f} bs=1 skip=\${off} count=1 2>/dev/null | od -An -tu1 | tr -d ' '); \
    printf \"\\\\\$(printf %03o \$(((b + 1) % 256)))\" | dd of=${f} bs=1 seek=\${off} conv=notrunc 2>/dev/null; \
    touch -r /tmp/ref ${f}; rm -f /tmp/ref"
  sum_before=$(node_sh "${VICTIM}" "sha256sum ${f} | cut -d' ' -f1")
  [[ ${sum_before} != "${sum_master}" ]] || {
    row corrupt-model FAIL - "could not corrupt ${f} on ${VICTIM}"
    return
  }
  t0=${SECONDS}
  playbook "${LOGS}/site-model-repair.log" site.yml --tags model -e model_verify=deep || rc=$?
  took=$((SECONDS - t0))
  sum_after=$(node_sh "${VICTIM}" "sha256sum ${f} | cut -d' ' -f1")
  local seen=no
  grep -qE "changed: \[${VICTIM}|${VICTIM}.*model.safetensors|>f.c.*model.safetensors" "${LOGS}/site-model-repair.log" && seen=yes
  local health=ok
  wait_health 300 >/dev/null || health=down
  if ((rc == 0)) && [[ ${sum_after} == "${sum_master}" && ${seen} == yes && ${health} == ok ]]; then
    row corrupt-model PASS "${took}" "byte flipped on ${VICTIM} (size+mtime kept); site.yml --tags model -e model_verify=deep repaired it (sha256 equal to master's), health ${health}"
  else
    row corrupt-model FAIL "${took}" "site.yml rc ${rc}, change seen ${seen}, sha256 ok $([[ ${sum_after} == "${sum_master}" ]] && echo yes || echo no), health ${health}"
  fi
}

scenario_master_reboot() {
  ensure_serving
  local t0 rec
  t0=${SECONDS}
  podman restart -t 10 "$(container_of "${MASTER}")" >/dev/null
  say "master-reboot: ${MASTER} restarted (podman restart)"
  if rec=$(wait_health 600); then rec=$((SECONDS - t0)); else rec=timeout; fi
  local enabled
  enabled=$(node_sh "${MASTER}" "systemctl is-enabled tpserve" 2>/dev/null || true)
  if [[ ${rec} != timeout ]]; then
    row master-reboot PASS "${rec}" "container restart -> /health ok after ${rec}s, no Ansible (unit ${enabled})"
  else
    row master-reboot FAIL 600 "not serving 600 s after the restart (unit ${enabled})"
  fi
}

# run_node_down LOG PLAYBOOK PATTERN: run PLAYBOOK (900 s at most) while VICTIM is down, output to
# LOG; prints "RC SECONDS NAMED", NAMED = yes when a LOG line matching PATTERN names VICTIM.
run_node_down() {
  local log=$1 pb=$2 pattern=$3 t0=${SECONDS} rc=0 named=no
  timeout 900 ansible-playbook -i "${INVENTORY}" "${pb}" >"${log}" 2>&1 || rc=$?
  if grep -q "${VICTIM}" <(grep -E "${pattern}" "${log}"); then named=yes; fi
  printf '%s %s %s\n' "${rc}" "$((SECONDS - t0))" "${named}"
}

scenario_worker_down() {
  ensure_serving
  local t0 rc s_serve s_smoke s_restore named_serve named_smoke serve_rc smoke_rc
  podman stop -t 5 "$(container_of "${VICTIM}")" >/dev/null
  say "worker-down: ${VICTIM} stopped"
  read -r serve_rc s_serve named_serve < <(run_node_down "${LOGS}/serve-node-down.log" serve.yml \
    "UNREACHABLE|fatal|FAILED|unreachable=1")
  read -r smoke_rc s_smoke named_smoke < <(run_node_down "${LOGS}/smoke-node-down.log" smoketest.yml \
    "UNREACHABLE|fatal|FAILED|failed|unreachable")
  local t_start changes
  t_start=${SECONDS}
  podman start "$(container_of "${VICTIM}")" >/dev/null
  wait_ssh "${VICTIM}" 180 || true
  t0=${SECONDS}
  rc=0
  playbook "${LOGS}/serve-node-back.log" serve.yml || rc=$?
  s_restore=$((SECONDS - t0))
  # The group may heal by itself (every unit is enabled and retries): say whether serve.yml changed anything.
  changes=$(awk '/^PLAY RECAP/ {r = 1; next} r && /changed=/ {sub(/.*changed=/, ""); n += $1} END {print n + 0}' \
    "${LOGS}/serve-node-back.log")
  local health=down generate=fail
  health_ok && health=ok
  chat_ok && generate=ok
  local detail="serve.yml rc ${serve_rc} in ${s_serve}s (names ${VICTIM}: ${named_serve}); smoketest.yml rc ${smoke_rc} in ${s_smoke}s (names it: ${named_smoke}); after podman start serve.yml rc ${rc} in ${s_restore}s (changed=${changes}), serving $((SECONDS - t_start))s after the start: health ${health}, chat completion ${generate}"
  if ((serve_rc != 0 && smoke_rc != 0 && rc == 0)) && ((s_serve <= FAIL_FAST_LIMIT && s_smoke <= FAIL_FAST_LIMIT)) &&
    [[ ${named_serve} == yes && ${named_smoke} == yes && ${health} == ok && ${generate} == ok ]]; then
    row worker-down PASS "${s_restore}" "${detail}"
  else
    row worker-down FAIL "${s_restore}" "${detail}"
  fi
}

scenario_replicas() {
  local rc=0 t0 marked failed_after ok_before
  t0=${SECONDS}
  playbook "${LOGS}/serve-replicas.log" serve.yml -e tpserve_layout=replicas -e tpserve_tp_size=1 || rc=$?
  if ((rc != 0)) || ! wait_health 300 >/dev/null; then
    row replicas FAIL $((SECONDS - t0)) "serve.yml replicas layout rc ${rc} (${LOGS}/serve-replicas.log)"
    playbook "${LOGS}/serve-restore.log" serve.yml || true
    return
  fi
  say "replicas: ${#ALL_NODES[@]} replicas behind the front door (HAProxy) after $((SECONDS - t0))s; stopping ${VICTIM}"
  podman stop -t 5 "$(container_of "${VICTIM}")" >/dev/null
  t0=${SECONDS}
  marked=timeout
  while ((SECONDS - t0 < 120)); do
    if curl -sS -m 5 "${API_URL}/health" | "${PY}" -c 'import json,sys; h=json.load(sys.stdin); sys.exit(0 if h["healthy_replicas"] < h["total_replicas"] else 1)' 2>/dev/null; then
      marked=$((SECONDS - t0))
      break
    fi
    sleep 0.5
  done
  local victim_before victim_after
  victim_before=$(front_door_sessions_of "${VICTIM}")
  rc=0
  "${PY}" tests/load/loadtest.py --url "${API_URL}" --model "${MODEL}" --requests "${REPLICA_REQUESTS}" \
    --concurrency 8 --max-tokens 16 --timeout 120 --json "${LOGS}/replicas-load.json" >"${LOGS}/replicas-load.log" 2>&1 || rc=$?
  failed_after=$("${PY}" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["failed"], d["by_status"])' "${LOGS}/replicas-load.json" 2>/dev/null || echo "? ?")
  victim_after=$(front_door_sessions_of "${VICTIM}")
  podman start "$(container_of "${VICTIM}")" >/dev/null
  wait_ssh "${VICTIM}" 180 || true
  ok_before=0
  playbook "${LOGS}/serve-restore.log" serve.yml || ok_before=$?
  local health=down generate=fail world
  wait_health 300 >/dev/null && health=ok
  chat_ok && generate=ok
  # Back to one TP group over every node: rank 0's /health (not the front door's) with world_size = node count.
  world=$(curl -sS -m 5 "${API_URL}/health" 2>/dev/null |
    "${PY}" -c 'import json,sys; print(json.load(sys.stdin).get("world_size", "?"))' 2>/dev/null || echo "?")
  local detail="front door (HAProxy) marked ${VICTIM} down after ${marked}s; then ${REPLICA_REQUESTS} requests: failed ${failed_after}, sessions sent to ${VICTIM}'s replica during the load: $((victim_after - victim_before)); tp_across_nodes restored (serve.yml rc ${ok_before}, health ${health}, world_size ${world} of ${#ALL_NODES[@]} nodes, chat completion ${generate})"
  if [[ ${marked} != timeout ]] && ((rc == 0 && ok_before == 0 && victim_before >= 0 && victim_after == victim_before)) &&
    [[ ${health} == ok && ${generate} == ok && ${world} == "${#ALL_NODES[@]}" ]]; then
    row replicas PASS "${marked}" "${detail}"
  else
    row replicas FAIL "${marked}" "${detail}"
  fi
}

# front_door_sessions_of HOST: sessions HAProxy sent to HOST's replicas so far (stot of the servers
# named HOST:<port> in its stats CSV; -1 when the front door does not answer or has none).
front_door_sessions_of() {
  curl -sS -m 5 "http://${MASTER_ADDR}:${FRONT_DOOR_STATS_PORT}/stats;csv" 2>/dev/null | awk -F, -v h="$1" '
    $1 == "replicas" && index($2, h ":") == 1 { n += $8; seen = 1 }
    END { print seen ? n : -1 }' 2>/dev/null || echo -1
}

# rolling-restart: replicas layout behind the front door; a serving-variable change
# (tpserve_max_batch_size=ROLLING_BATCH_SIZE) applied by serve.yml while closed-loop load runs in
# batches of ROLLING_BATCH requests (at most ROLLING_MAX_BATCHES, until serve.yml ends): every
# replica restarted one at a time, 0 requests lost (every answer 200).
scenario_rolling_restart() {
  local rc=0 t0 replicas=(-e tpserve_layout=replicas -e tpserve_tp_size=1) before after
  playbook "${LOGS}/serve-rolling-base.log" serve.yml "${replicas[@]}" || rc=$?
  if ((rc != 0)) || ! wait_health 300 >/dev/null; then
    row rolling-restart FAIL - "serve.yml replicas layout rc ${rc} (${LOGS}/serve-rolling-base.log)"
    return
  fi
  before=$(replica_starts)
  rm -f "${LOGS}"/rolling-load-*.json
  t0=${SECONDS}
  playbook "${LOGS}/serve-rolling.log" serve.yml "${replicas[@]}" -e "tpserve_max_batch_size=${ROLLING_BATCH_SIZE}" &
  local serve_pid=$! n=0
  while kill -0 "${serve_pid}" 2>/dev/null && ((n < ROLLING_MAX_BATCHES)); do
    n=$((n + 1))
    "${PY}" tests/load/loadtest.py --url "${API_URL}" --model "${MODEL}" --requests "${ROLLING_BATCH}" \
      --concurrency 8 --max-tokens 16 --timeout 120 --json "${LOGS}/rolling-load-${n}.json" \
      >"${LOGS}/rolling-load-${n}.log" 2>&1 || true
  done
  wait "${serve_pid}" || rc=$?
  local took=$((SECONDS - t0)) totals
  after=$(replica_starts)
  totals=$("${PY}" -c '
import glob, json, sys
from collections import Counter
runs = [json.load(open(f)) for f in glob.glob(sys.argv[1] + "/rolling-load-*.json")]
by = Counter()
for r in runs:
    by.update(r["by_status"])
print(sum(r["requests"] for r in runs), sum(r["failed"] for r in runs), dict(by))' "${LOGS}")
  local sent failed by restarted
  read -r sent failed by <<<"${totals}"
  restarted=$("${PY}" -c '
import sys
b, a = dict(x.split("=", 1) for x in sys.argv[1].split()), dict(x.split("=", 1) for x in sys.argv[2].split())
print(sum(1 for k in a if a[k] != b.get(k)), len(a))' "${before}" "${after}")
  local detail="serve.yml -e tpserve_max_batch_size=${ROLLING_BATCH_SIZE} (replicas) rc ${rc} in ${took}s; replicas restarted (of all): ${restarted}; load during it: ${sent} requests in ${n} batches of ${ROLLING_BATCH} at 8 clients, failed ${failed}, by status ${by}"
  if ((rc == 0)) && [[ ${failed} == 0 && ${by} != *"-bad"* && ${by} != *"'503'"* && ${by} != *"'429'"* ]] &&
    [[ ${restarted% *} == "${restarted#* }" ]]; then
    row rolling-restart PASS "${took}" "${detail}"
  else
    row rolling-restart FAIL "${took}" "${detail}"
  fi
}

# replica_starts: "host/unit=ActiveEnterTimestamp ..." for every replica unit of every node.
replica_starts() {
  local n
  for n in "${ALL_NODES[@]}"; do
    node_sh "${n}" "for u in \$(systemctl list-units --plain --no-legend 'tpserve-replica-*' | awk '{print \$1}'); do
      echo ${n}/\${u}=\$(systemctl show -p ActiveEnterTimestampMonotonic --value \${u}); done"
  done | tr '\n' ' '
}

scenario_security() {
  local t0=${SECONDS} rc=0
  tests/security/check.sh all >"${LOGS}/security.log" 2>&1 || rc=$?
  local n_pass n_fail
  n_pass=$(grep -c '^  PASS' "${LOGS}/security.log" || true)
  n_fail=$(grep -c '^  FAIL' "${LOGS}/security.log" || true)
  if ((rc == 0)); then
    row security PASS $((SECONDS - t0)) "${n_pass} checks passed (${LOGS}/security.log)"
  else
    row security FAIL $((SECONDS - t0)) "${n_fail} failed: $(grep '^  FAIL' "${LOGS}/security.log" | head -n 3 | tr '\n' ' ')"
  fi
}

# VICTIM_PID: the PID of VICTIM's container (its network namespace), read by partition() before the
# DROP's clock starts: `podman inspect` waits for podman's lock, seconds when other labs run podman
# (one run measured from before two inspects started its /health polls 8 s late: a 503 "after 36 s"
# that came 30 s after the last answered heartbeat).
VICTIM_PID=""

# in_netns CMD...: run CMD in VICTIM's network namespace (from the lab host: the nodes have no
# firewall tools, and a rule made this way cannot cut the ssh the test itself uses).
in_netns() {
  nsenter -t "${VICTIM_PID}" -n "$@"
}

# partition_rules ACTION: insert (-I) or delete (-D) the DROP between VICTIM and the master, both ways.
partition_rules() {
  in_netns iptables -w "$1" INPUT -s "${MASTER_ADDR}" -j DROP &&
    in_netns iptables -w "$1" OUTPUT -d "${MASTER_ADDR}" -j DROP
}

# partition MODE (stream | idle): a DROP between the master and VICTIM, both ways. stream: one stream of
# 512 tokens in flight (the DROP comes after its first token); idle: nothing in flight. /health is
# polled every 0.5 s (each answer in partition[-idle]-health.log); the DROP is removed once /health
# said 503 and (stream) the stream ended, or (idle) /health stopped answering (rank 0 exited) or 20 s
# passed after the 503; 90 s at most.
partition() {
  local mode=$1 name=partition tag=partition
  [[ ${mode} == stream ]] || name=partition-idle tag=partition-idle
  ensure_serving
  local started=${LOGS}/${tag}.started inflight="" t_drop t_in t_503=timeout t_gone=none t_undo rec=timeout code last="" codes=() rc=0
  local restarts0 restarts1 limit=${CHAOS_PARTITION_LIMIT:-35} health_log=${LOGS}/${tag}-health.log
  restarts0=$(node_sh "${MASTER}" "systemctl show tpserve -p NRestarts --value")
  rm -f "${started}" "${health_log}"
  if [[ ${mode} == stream ]]; then
    "${PY}" tests/chaos/inflight.py --url "${API_URL}" --model "${MODEL}" --n 1 --max-tokens 512 \
      --timeout 150 --started "${started}" >"${LOGS}/${tag}-inflight.json" 2>"${LOGS}/${tag}-inflight.err" &
    inflight=$!
    for _ in $(seq 120); do [[ -f ${started} ]] && break; sleep 0.5; done
    [[ -f ${started} ]] || {
      row "${name}" FAIL - "in-flight stream never started ($(tail -n 3 "${LOGS}/${tag}-inflight.err"))"
      return
    }
  else
    sleep 6 # at least one idle heartbeat (every min(5 s, heartbeat timeout / 6)) before the DROP
  fi
  VICTIM_PID=$(podman inspect -f '{{.State.Pid}}' "$(container_of "${VICTIM}")")
  trap 'partition_rules -D 2>/dev/null || true' EXIT
  t_drop=$(date +%s.%N)
  partition_rules -I
  t_in=$("${PY}" -c "print(round($(date +%s.%N) - ${t_drop}, 2))")
  say "${name}: DROP between ${VICTIM} and ${MASTER} (${MASTER_ADDR}) in ${VICTIM}'s netns (rules in place ${t_in}s after the clock started)"
  # Poll /health (2 s client timeout) until the end condition above, 90 s at most.
  while :; do
    local now body at
    body=$(curl -s -w ' %{http_code}' -m 2 "${API_URL}/health" || true)
    code=${body##* }
    now=$(date +%s.%N)
    at=$("${PY}" -c "print(round(${now} - ${t_drop}, 1))")
    printf '%s %s\n' "${at}" "${body:0:240}" >>"${health_log}"
    [[ ${last} == "${code}" ]] || codes+=("${code}@${at}s")
    last=${code}
    [[ ${t_503} != timeout || ${code} != 503 ]] || t_503=${at}
    [[ ${t_503} == timeout || ${t_gone} != none || ${code} != 000 ]] || t_gone=${at}
    if [[ ${t_503} != timeout ]]; then
      if [[ ${mode} == stream ]]; then
        kill -0 "${inflight}" 2>/dev/null || break
      else
        [[ ${t_gone} == none ]] || break
        "${PY}" -c "import sys; sys.exit(0 if ${at} - ${t_503} > 20 else 1)" && break
      fi
    fi
    "${PY}" -c "import sys; sys.exit(0 if ${at} > 90 else 1)" && break
    sleep 0.5
  done
  [[ -z ${inflight} ]] || wait "${inflight}" || rc=$?
  partition_rules -D
  trap - EXIT
  t_undo=${SECONDS}
  say "${name}: DROP removed"
  local end=- outcome=none ending=- message=""
  if [[ ${mode} == stream ]]; then
    # how the stream ended (inflight.py's "ending"): sse-error+done = the server answered (an SSE
    # error event, then [DONE]); cut / eof = the connection broke / closed without one
    read -r outcome end ending message < <("${PY}" -c '
import json, sys
r = json.load(open(sys.argv[1]))["requests"][0]
msg = r.get("error_message") or r.get("detail") or "-"
print(r["outcome"], round(r["end"] - float(sys.argv[2]), 1), r.get("ending", "?"), " ".join(msg.split())[:200])' \
      "${LOGS}/${tag}-inflight.json" "${t_drop}" 2>/dev/null || echo "? ? ? ?")
  fi
  while ((SECONDS - t_undo < 300)); do
    if health_ok && chat_ok; then
      rec=$((SECONDS - t_undo))
      break
    fi
    sleep 1
  done
  restarts1=$(node_sh "${MASTER}" "systemctl show tpserve -p NRestarts --value")
  local detail="(DROP rules in place after ${t_in}s) /health 503 after ${t_503}s, no answer after ${t_gone}s (codes ${codes[*]}); serving again (health + chat) ${rec}s after the DROP was removed; master NRestarts ${restarts0}->${restarts1}"
  [[ ${mode} != stream ]] || detail="stream ${outcome} ${end}s after the DROP, ended ${ending} (${message}); ${detail}"
  local ok=yes
  [[ ${t_503} != timeout && ${rec} != timeout ]] || ok=no
  [[ ${mode} != stream || ${outcome} == error ]] || ok=no
  # the group that must exit answers first (issue 14): an SSE error event naming why, then [DONE]
  [[ ${mode} != stream || ${ending} == sse-error+done ]] || ok=no
  [[ ${ok} == no ]] || "${PY}" -c "import sys; sys.exit(0 if ${t_503} <= ${limit} and ${rec} <= ${RECOVERY_LIMIT} and ('${end}' == '-' or float('${end}') <= ${limit}) else 1)" || ok=no
  if [[ ${ok} == yes ]]; then
    row "${name}" PASS "${rec}" "${detail}"
  else
    row "${name}" FAIL "${rec}" "${detail}"
  fi
}

scenario_partition() { partition stream; }
scenario_partition_idle() { partition idle; }

scenario_model_quota() {
  ensure_serving
  local link=/opt/tpserve/models/${MODEL} versions before=() after=() n rc=0 t0 took msg health=down gen=fail
  for n in "${ALL_NODES[@]}"; do before+=("$(node_sh "${n}" "readlink ${link}")"); done
  versions=$(dirname "${before[-1]}")
  # A tmpfs over the victim's versions directory holding a copy of what is there, ~1 MiB free.
  node_sh "${VICTIM}" "set -e; rm -rf /var/tmp/quota-save; cp -a ${versions} /var/tmp/quota-save;
    used=\$(du -s -B1 ${versions} | cut -f1); mount -t tmpfs -o size=\$((used + 1048576)),mode=0755 tpserve-quota ${versions};
    cp -a /var/tmp/quota-save/. ${versions}/; chown tpserve:tpserve ${versions}; df -h ${versions} | tail -n 1"
  t0=${SECONDS}
  playbook "${LOGS}/site-model-quota.log" site.yml --tags model \
    -e "{\"model_synthetic_args\": [\"--seed\", \"${CHAOS_QUOTA_SEED:-7}\"]}" || rc=$?
  took=$((SECONDS - t0))
  msg=$(grep -o "${VICTIM}: not enough space for model version[^\"]*" "${LOGS}/site-model-quota.log" | head -n 1 | cut -c1-300)
  for n in "${ALL_NODES[@]}"; do after+=("$(node_sh "${n}" "readlink ${link}")"); done
  health_ok && health=ok
  curl -fsS -m 60 -H 'content-type: application/json' "${API_URL}/generate" \
    -d '{"prompt": "hello", "max_new_tokens": 4}' >"${LOGS}/quota-generate.json" 2>&1 && gen=ok
  node_sh "${VICTIM}" "umount ${versions} && rm -rf /var/tmp/quota-save"
  local same=yes detail
  [[ ${before[*]} == "${after[*]}" ]] || same="no (${after[*]})"
  detail="site.yml --tags model with a new source rc ${rc} in ${took}s, message: '${msg:-none}'; symlinks unchanged: ${same}; old model: health ${health}, /generate ${gen}"
  if ((rc != 0)) && [[ -n ${msg} && ${same} == yes && ${health} == ok && ${gen} == ok ]]; then
    row model-quota PASS "${took}" "${detail}"
  else
    row model-quota FAIL "${took}" "${detail}"
  fi
}

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(kill-rank corrupt-model master-reboot worker-down partition partition-idle model-quota rolling-restart replicas security)
say "lab ${INVENTORY}: master ${MASTER}, victim worker ${VICTIM}, API ${API_URL}"
for s in "${scenarios[@]}"; do
  case ${s} in
    kill-rank | corrupt-model | master-reboot | worker-down | partition | partition-idle | model-quota | rolling-restart | replicas | security) ;;
    *) die "unknown scenario ${s}" ;;
  esac
  say "scenario ${s}"
  "scenario_${s//-/_}"
done

{
  echo "| scenario       | ok   | seconds | detail |"
  echo "|----------------|------|---------|--------|"
  printf '%s\n' "${rows[@]}"
} | tee "${LOGS}/summary.txt"
((failed == 0)) || die "${failed} scenario(s) failed"
say "all scenarios passed"
