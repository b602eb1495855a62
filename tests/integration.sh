#!/usr/bin/env bash
# End-to-end on the local lab (first version):
#   lab up -> site.yml -> site.yml again (changed=0 on every host) -> site.yml --check --diff
#   (changed=0, failed=0) -> serve.yml (tp_across_nodes) twice (changed=0) -> smoketest.yml
#   -> kill -9 a rank on the third node, wait for systemd to restart the group -> serve.yml
#   (changed=0) -> smoketest.yml -> serve.yml with tpserve_layout=replicas tpserve_tp_size=1 twice
#   (changed=0) -> smoketest.yml (reports reports/smoke-<inventory>-<stage>.json).
# Playbooks that do not exist yet are skipped with a message. The lab stays up afterwards
# (tests/run_ci.sh tears it down; or `make lab-down`).
# Uses the default lab and inventory/lab; for a private lab export LAB_PREFIX, LAB_SUBNET,
# LAB_NETWORK and LAB_INVENTORY (see tests/lab/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${PWD}/.venv/bin:${PATH}"
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
INVENTORY=${LAB_INVENTORY:-inventory/lab}
# Extra ansible-playbook arguments for every run, e.g. INTEGRATION_ARGS="-e foo=bar -v".
read -r -a EXTRA <<<"${INTEGRATION_ARGS:-}"
LOG_DIR=${INTEGRATION_LOG_DIR:-reports/integration}
mkdir -p "${LOG_DIR}"

say() { printf '\n=== integration: %s\n' "$*"; }
die() {
  printf '=== integration: FAILED: %s\n' "$*" >&2
  exit 1
}

# playbook LOGNAME ARGS...: ansible-playbook on the lab inventory, output shown and kept.
playbook() {
  local log=${LOG_DIR}/$1.log t0=${SECONDS} rc=0
  shift
  say "ansible-playbook -i ${INVENTORY} $* (log ${log})"
  ansible-playbook -i "${INVENTORY}" ${EXTRA[@]+"${EXTRA[@]}"} "$@" 2>&1 | tee "${log}" || rc=$?
  say "$1: exit ${rc} after $((SECONDS - t0))s"
  return "${rc}"
}

# recap_check LOG WHAT: every host line of the PLAY RECAP in LOG has changed=0 failed=0
# unreachable=0 (at least one host line must be there).
recap_check() {
  local log=$1 what=$2 bad
  bad=$(awk '
    /^PLAY RECAP/ { recap = 1; next }
    recap && /: ok=/ {
      hosts++
      if ($0 !~ / changed=0 / || $0 !~ / failed=0 / || $0 !~ / unreachable=0 /) print
    }
    END { if (hosts == 0) print "no PLAY RECAP host lines found" }
  ' "${log}")
  [[ -z ${bad} ]] || die "${what}: expected changed=0 failed=0 unreachable=0 on every host, got:
${bad}"
  say "${what}: changed=0 failed=0 on every host"
}

have() {
  [[ -f $1 ]] && return 0
  say "$1: not there yet, skipped"
  return 1
}

say "lab up (LAB_NODES=${LAB_NODES:-4})"
tests/lab/lab.sh up

for pb in site.yml serve.yml smoketest.yml; do
  [[ -f ${pb} ]] || continue
  ansible-playbook -i "${INVENTORY}" --syntax-check "${pb}" >/dev/null || die "${pb}: syntax check"
done
say "syntax check passed"

if have site.yml; then
  playbook site-1 site.yml || die "site.yml (first run)"
  playbook site-2 site.yml || die "site.yml (second run)"
  recap_check "${LOG_DIR}/site-2.log" "site.yml second run (idempotence)"
  playbook site-check site.yml --check --diff || die "site.yml --check --diff"
  recap_check "${LOG_DIR}/site-check.log" "site.yml --check --diff"
fi
# smoke NAME ARGS...: smoketest.yml, then keep its report as reports/smoke-<inventory>-NAME.json.
smoke() {
  local name=$1 report
  shift
  report=reports/smoke-$(basename "${INVENTORY}").json
  rm -f "${report}"
  playbook "smoketest-${name}" smoketest.yml "$@" || die "smoketest.yml (${name})"
  [[ -f ${report} ]] || die "smoketest.yml (${name}) wrote no ${report}"
  cp "${report}" "${report%.json}-${name}.json"
  say "smoke report (${name}): ${report%.json}-${name}.json"
}

# restarts HOST: NRestarts of HOST's tpserve.service.
restarts() {
  ansible -i "${INVENTORY}" "$1" -m ansible.builtin.command \
    -a 'systemctl show tpserve.service -p NRestarts --value' | tail -n 1
}

if have serve.yml && have smoketest.yml; then
  # Layout 1: one TP group over every node (the lab's TP=4 over 4 nodes).
  playbook serve serve.yml || die "serve.yml (tp_across_nodes)"
  playbook serve-2 serve.yml || die "serve.yml (tp_across_nodes, second run)"
  recap_check "${LOG_DIR}/serve-2.log" "serve.yml second run (idempotence)"
  smoke tp_across_nodes

  # A rank dies (kill -9 on the third node): every node's unit must restart (survivors fail at
  # their next collective/heartbeat) and the group must come back; serve.yml (changed=0) waits
  # for /health and the smoke test must pass again.
  mapfile -t nodes < <(ansible -i "${INVENTORY}" tpserve --list-hosts | tail -n +2 | tr -d ' ')
  victim=${nodes[2]:-${nodes[-1]}}
  master_before=$(restarts "${nodes[0]}")
  say "kill -9 the rank on ${victim}"
  t_kill=${SECONDS}
  ansible -i "${INVENTORY}" "${victim}" -m ansible.builtin.shell \
    -a 'pkill -9 -u tpserve -f -- "-m tpserve --local_rank"' || die "no rank to kill on ${victim}"
  until (($(restarts "${nodes[0]}") > master_before)); do
    ((SECONDS - t_kill < 300)) || die "the master's unit did not restart within 300s of the kill"
    sleep 3
  done
  say "the master's unit restarted $((SECONDS - t_kill))s after the kill"
  playbook serve-recovered serve.yml || die "serve.yml after the kill"
  recap_check "${LOG_DIR}/serve-recovered.log" "serve.yml after the kill"
  say "group ready again $((SECONDS - t_kill))s after the kill"
  smoke recovered

  # Layout 2: an independent TP=1 group per node behind the router on the master.
  replicas=(-e tpserve_layout=replicas -e tpserve_tp_size=1)
  playbook serve-replicas serve.yml "${replicas[@]}" || die "serve.yml (replicas)"
  playbook serve-replicas-2 serve.yml "${replicas[@]}" || die "serve.yml (replicas, second run)"
  recap_check "${LOG_DIR}/serve-replicas-2.log" "serve.yml replicas second run (idempotence)"
  smoke replicas "${replicas[@]}"
fi
say "passed"
