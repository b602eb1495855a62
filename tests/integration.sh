#!/usr/bin/env bash
# End-to-end on the local lab (first version):
#   lab up -> site.yml -> site.yml again (changed=0 on every host) -> site.yml --check --diff
#   (changed=0, failed=0) -> serve.yml -> smoketest.yml (report reports/smoke-<inventory>.json).
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

for pb in site.yml serve.yml smoketest.yml; do
  [[ -f ${pb} ]] || continue
  ansible-playbook -i "${INVENTORY}" --syntax-check "${pb}" >/dev/null || die "${pb}: syntax check"
done
say "syntax check passed"

say "lab up (LAB_NODES=${LAB_NODES:-4})"
tests/lab/lab.sh up

if have site.yml; then
  playbook site-1 site.yml || die "site.yml (first run)"
  playbook site-2 site.yml || die "site.yml (second run)"
  recap_check "${LOG_DIR}/site-2.log" "site.yml second run (idempotence)"
  playbook site-check site.yml --check --diff || die "site.yml --check --diff"
  recap_check "${LOG_DIR}/site-check.log" "site.yml --check --diff"
fi
if have serve.yml; then
  playbook serve serve.yml || die "serve.yml"
fi
if have smoketest.yml; then
  playbook smoketest smoketest.yml || die "smoketest.yml"
  report=reports/smoke-$(basename "${INVENTORY}").json
  if [[ -f ${report} ]]; then say "smoke report: ${report}"; else die "smoketest.yml wrote no ${report}"; fi
fi
say "passed"
