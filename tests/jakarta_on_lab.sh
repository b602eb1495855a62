#!/usr/bin/env bash
# `make integration-jakarta` (issue 11): the reference cluster's configuration,
# inventory/jakarta/group_vars/tpserve/main.yml, proven on local lab nodes. Jakarta itself is never
# contacted: its group_vars are applied to a private lab whose only differences are the overrides in
# tests/lab/jakarta-overrides.yml (each printed with its reason first).
#   overrides -> lab up -> the inventory resolves to Jakarta + overrides -> site.yml -> site.yml
#   again (changed=0 on every host) -> serve.yml (Jakarta's layout replicas: one TP=1 group per node
#   behind HAProxy on the master) -> smoketest.yml through that front door -> lab down.
# Any failing step stops the run (exit 1, naming the step and its log); each step's wall time is
# printed and kept in $JAKARTA_LOG_DIR/times.txt, the PLAY RECAP lines in recaps.txt.
# Needs a private lab: LAB_PREFIX, LAB_SUBNET, LAB_NETWORK, LAB_INVENTORY (not inventory/lab; the
# Makefile target sets them); LAB_NODES (default 4, Jakarta's size). JAKARTA_KEEP_LAB=1 leaves the
# lab up afterwards (for a look; take it down with tests/lab/lab.sh down and the same knobs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${PWD}/.venv/bin:${PATH}"
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
: "${LAB_INVENTORY:?set LAB_INVENTORY (and LAB_PREFIX, LAB_SUBNET, LAB_NETWORK) to a private lab: make integration-jakarta does}"
export LAB_NODES=${LAB_NODES:-4}
INVENTORY=${LAB_INVENTORY}
LOG_DIR=${JAKARTA_LOG_DIR:-reports/integration-jakarta}
mkdir -p "${LOG_DIR}"
: >"${LOG_DIR}/times.txt"
: >"${LOG_DIR}/recaps.txt"
T0=${SECONDS}
CURRENT="start"

say() { printf '\n=== jakarta-on-lab: %s\n' "$*"; }
die() {
  printf '\n=== jakarta-on-lab: FAILED in step "%s": %s\n' "${CURRENT}" "$*" >&2
  exit 1
}

# step NAME CMD...: run CMD as the step NAME, print and record its wall time; a failure stops the run.
step() {
  local name=$1 t0=${SECONDS} rc=0
  shift
  CURRENT=${name}
  say "step ${name}: $*"
  "$@" || rc=$?
  printf '%-22s %5ds  exit %d\n' "${name}" "$((SECONDS - t0))" "${rc}" | tee -a "${LOG_DIR}/times.txt"
  ((rc == 0)) || die "exit ${rc}"
}

# playbook LOGNAME ARGS...: ansible-playbook on the lab inventory, output shown and kept; the PLAY
# RECAP host lines go to recaps.txt.
playbook() {
  local name=$1 log=${LOG_DIR}/$1.log rc=0
  shift
  ansible-playbook -i "${INVENTORY}" "$@" 2>&1 | tee "${log}" || rc=$?
  {
    echo "# ${name}: ansible-playbook $* (exit ${rc})"
    awk '/^PLAY RECAP/ { r = 1; next } r && /: ok=/' "${log}" | tr -s ' '
  } >>"${LOG_DIR}/recaps.txt"
  ((rc == 0)) || echo "ansible-playbook $* failed (exit ${rc}); log ${log}" >&2
  return "${rc}"
}

# no_change LOGNAME: every host line of its PLAY RECAP says changed=0 failed=0 unreachable=0.
no_change() {
  awk '
    /^PLAY RECAP/ { recap = 1; next }
    recap && /: ok=/ { hosts++; if ($0 !~ / changed=0 / || $0 !~ / failed=0 / || $0 !~ / unreachable=0 /) { print; bad = 1 } }
    END { if (hosts == 0) { print "no PLAY RECAP host lines"; bad = 1 } exit bad }
  ' "${LOG_DIR}/$1.log" || {
    echo "$1: expected changed=0 failed=0 unreachable=0 on every host (lines above)" >&2
    return 1
  }
}

site_twice() {
  playbook site-2 site.yml && no_change site-2
}

# The smoke report: passed, sent to the front door (the master's address, tpserve_port), every
# replica healthy behind it, under Jakarta's served name.
smoke() {
  local report
  report=reports/smoke-$(basename "${INVENTORY}").json
  rm -f "${report}"
  playbook smoketest smoketest.yml || return 1
  [[ -f ${report} ]] || {
    echo "smoketest.yml wrote no ${report}" >&2
    return 1
  }
  cp "${report}" "${LOG_DIR}/smoke.json"
  python - "${report}" "${INVENTORY}" <<'EOF'
import json, subprocess, sys
report, inventory = json.load(open(sys.argv[1])), sys.argv[2]
inv = json.loads(subprocess.run(["ansible-inventory", "-i", inventory, "--list"], check=True,
                                capture_output=True, text=True).stdout)
master = inv["tpserve_master"]["hosts"][0]
hv = inv["_meta"]["hostvars"][master]
nodes = len(inv["_meta"]["hostvars"])
front = f"http://{hv['ansible_host']}:8000"
checks = {c["name"]: c["ok"] for c in report["checks"]}
front_door = {n: ok for n, ok in checks.items() if n.startswith("front_door.")}
problems = [
    p for p, bad in [
        (f"passed is {report.get('passed')}", report.get("passed") is not True),
        (f"url {report['url']} is not the front door {front}", report["url"] != front),
        (f"layout {report['layout']} (Jakarta's: {hv['tpserve_layout']})", report["layout"] != hv["tpserve_layout"]),
        (f"model {report['expected'].get('model')} (Jakarta's: {hv['tpserve_model_name']})",
         report["expected"].get("model") != hv["tpserve_model_name"]),
        (f"replicas {report['expected'].get('replicas')}, expected {nodes}", report["expected"].get("replicas") != nodes),
        (f"front door checks {front_door}", len(front_door) < 3 or not all(front_door.values())),
    ] if bad
]
if problems:
    sys.exit("smoke report " + sys.argv[1] + ": " + "; ".join(problems))
ok = sum(checks.values())
print(f"smoke report: {ok}/{len(checks)} checks passed through the front door {front} "
      f"(model {hv['tpserve_model_name']}, {nodes} replicas, front door checks: {', '.join(front_door)})")
EOF
}

lab_down() {
  tests/lab/lab.sh down
}

# Always: the lab goes down (unless JAKARTA_KEEP_LAB=1), the generated group_vars are removed, and
# the step times so far are printed.
finish() {
  local rc=$?
  if [[ ${JAKARTA_KEEP_LAB:-0} == 1 ]]; then
    say "JAKARTA_KEEP_LAB=1: the lab stays up (inventory ${INVENTORY})"
  else
    local t0=${SECONDS} down_rc=0
    say "step lab-down: tests/lab/lab.sh down"
    lab_down || down_rc=$?
    python tests/lab/jakarta_inventory.py clean "${INVENTORY}" || down_rc=$?
    printf '%-22s %5ds  exit %d\n' "lab-down" "$((SECONDS - t0))" "${down_rc}" | tee -a "${LOG_DIR}/times.txt"
    ((down_rc == 0)) || rc=1
  fi
  say "step times (${LOG_DIR}/times.txt), total $((SECONDS - T0))s, load $(cut -d' ' -f1-3 /proc/loadavg):"
  cat "${LOG_DIR}/times.txt"
  say "PLAY RECAP lines (${LOG_DIR}/recaps.txt):"
  cat "${LOG_DIR}/recaps.txt"
  if ((rc == 0)); then say "passed"; else say "FAILED (exit ${rc}) in step \"${CURRENT}\""; fi
  exit "${rc}"
}

[[ $(realpath -m "${INVENTORY}") != "$(realpath -m inventory/lab)" ]] ||
  die "LAB_INVENTORY=inventory/lab: this scenario writes its own group_vars; use a private lab"
trap finish EXIT

step overrides python tests/lab/jakarta_inventory.py write "${INVENTORY}"
step lab-up tests/lab/lab.sh up
step inventory-check python tests/lab/jakarta_inventory.py check "${INVENTORY}"
step site playbook site-1 site.yml
step site-again site_twice
step serve playbook serve serve.yml
step smoketest smoke
