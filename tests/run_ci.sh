#!/usr/bin/env bash
# The CI pipeline: lint -> unit -> molecule -> integration, stopping at the first failure.
#
#   tests/run_ci.sh                  # every stage (make test, .ci/run)
#   tests/run_ci.sh unit molecule    # some stages, in the order given
#
# Each step (lint; each pytest tree; each molecule scenario; integration) counts once. Whatever
# happens (even a failed lint), the labs (default lab, molecule labs) are torn down when the run
# includes the molecule or integration stage, /dev/shm files the run leaked are removed, and the last
# line is `N passed, N failed`.
# With every stage (make test): app/tests run in the background from the start; the molecule
# scenarios the integration stage checks on its lab (tests/integration.sh --verifies) get no lab of
# their own; the integration runs with INTEGRATION_SCOPE=ci (no node rebuild: make integration).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=${PWD}
export PATH="${REPO}/.venv/bin:${PATH}"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

passed=0
failed=0
teardown_labs=0
shm_marker=$(mktemp /tmp/tpserve-ci-start.XXXXXX)

say() { printf '\n=== run_ci: %s\n' "$*"; }

# /dev/shm files created during this run (DeepSpeed's CPU all-reduce buffers, torch shared
# memory) that no live process still maps or holds open.
clean_shm() {
  local f
  while IFS= read -r f; do
    if grep -qsF "${f}" /proc/[0-9]*/maps ||
      find /proc/[0-9]*/fd -maxdepth 1 -lname "${f}" -print -quit 2>/dev/null | grep -q .; then
      continue
    fi
    rm -f -- "${f}" && echo "run_ci: removed leaked ${f}"
  done < <(find /dev/shm -maxdepth 1 -type f -user "$(id -u)" -newer "${shm_marker}" \
    \( -name 'deepspeed_allreduce_buffer_*' -o -name 'torch_*' -o -name 'tpserve*' \) 2>/dev/null)
}

# The lab's node image, made in the background from the pipeline's start (image_prefetch): on a
# fresh machine debootstrap (about a minute, mostly network and disk) overlaps lint and the unit
# tests instead of delaying the first lab. Waited for before the first lab stage, and at the end.
image_pid=""
image_log=""
image_prefetch() {
  image_log=$(mktemp /tmp/tpserve-ci-image.XXXXXX)
  tests/lab/lab.sh image >"${image_log}" 2>&1 &
  image_pid=$!
}
image_wait() {
  [[ -n ${image_pid} ]] || return 0
  local rc=0
  wait "${image_pid}" || rc=$?
  image_pid=""
  sed 's/^/run_ci: (node image, in the background) /' "${image_log}"
  rm -f "${image_log}"
  # not fatal here: lab.sh up builds the image itself (and says why it cannot)
  ((rc == 0)) || echo "run_ci: the background node image build failed (exit ${rc}); lab.sh up will retry" >&2
}

kill_tree() {  # PID: it and every descendant (by parent pid: also those in their own sessions)
  local child
  for child in $(pgrep -P "$1"); do kill_tree "${child}"; done
  kill "$1" 2>/dev/null || true
}

finish() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n ${beside_pid} ]]; then  # the pipeline stopped before the background step ended
    kill_tree "${beside_pid}"
    wait "${beside_pid}" 2>/dev/null
    echo "run_ci: ${beside_name} (in the background) stopped with the pipeline; its output so far:"
    tail -20 "${beside_log}"
    rm -f "${beside_log}"
  fi
  image_wait
  if ((teardown_labs)); then
    say "teardown: default lab and molecule labs"
    tests/lab/lab.sh down || echo "run_ci: WARNING: could not take the default lab down" >&2
    # Molecule labs: the default one and any a scenario names (ansible.env TPSERVE_MOL_NETWORK);
    # lab.sh down finds a lab's containers by its network label.
    local net scratch
    scratch=$(mktemp -d /tmp/tpserve-ci-mol.XXXXXX)
    for net in $({
      echo "${TPSERVE_MOL_NETWORK:-tpserve-mol}"
      sed -n 's/^ *TPSERVE_MOL_NETWORK: *["'"'"']\{0,1\}\([A-Za-z0-9_.-]*\).*/\1/p' molecule/*/molecule.yml 2>/dev/null
    } | sort -u); do
      LAB_NETWORK=${net} LAB_INVENTORY=${scratch} tests/lab/lab.sh down ||
        echo "run_ci: WARNING: could not take the molecule lab ${net} down" >&2
    done
    rm -rf "${scratch}"
  fi
  clean_shm
  rm -f "${shm_marker}"
  if ((rc != 0 && failed == 0)); then failed=$((failed + 1)); fi
  echo "${passed} passed, ${failed} failed"
  exit "${rc}"
}
trap finish EXIT
trap 'echo "run_ci: interrupted" >&2; exit 130' INT TERM

# counted NAME RC SECONDS [NOTE]: count one step's result; stop the pipeline on failure.
counted() {
  if (($2 == 0)); then
    passed=$((passed + 1))
    say "$1: passed ($3s${4:+, $4})"
  else
    failed=$((failed + 1))
    say "$1: FAILED (exit $2, $3s) - stopping here"
    exit 1
  fi
}

# step NAME COMMAND...: run one counted step.
step() {
  local name=$1 t0=${SECONDS} rc=0
  shift
  say "${name}: $*"
  "$@" || rc=$?
  counted "${name}" "${rc}" "$((SECONDS - t0))"
}

stage_lint() {
  step lint tests/lint.sh
  # No lab needed, < 1 s: nothing enables SSH password auth or disables host key checking.
  step "security static" tests/security/check.sh static
}

has_tests() { compgen -G "$1/test_*.py" >/dev/null || compgen -G "$1/**/test_*.py" >/dev/null; }

# app/tests beside lint, tests/unit and the molecule stage (when the run has unit then molecule),
# from the pipeline's start, in APP_TEST_WORKERS (default 2) pytest-xdist processes, a test file
# per process: the app tests mostly wait (DeepSpeed groups starting, heartbeat and step timeouts:
# measured alone, 407 s wall for 220 s of CPU in one process), lint runs on ~1.3 of the 2 cores,
# tests/unit is ansible-playbook runs on this machine (no lab, its files in tmp), molecule waits on
# its containers. The integration stage still runs alone: its 16.3 timing targets are measured
# there. The app tests' output is shown when they end.
beside_pid=""
beside_log=""
beside_name=""
beside_t0=0
beside_start() {  # TREE: python -m pytest -q TREE in the background
  beside_name="unit $1"
  beside_log=$(mktemp /tmp/tpserve-ci-beside.XXXXXX)
  beside_t0=${SECONDS}
  local workers=(-n "${APP_TEST_WORKERS:-2}" --dist loadfile)
  say "${beside_name}: python -m pytest -q ${workers[*]} $1 (in the background, beside the next steps; output when it ends)"
  python -m pytest -q "${workers[@]}" "$1" >"${beside_log}" 2>&1 &
  beside_pid=$!
}
beside_wait() {  # count it like a step
  [[ -n ${beside_pid} ]] || return 0
  local rc=0
  say "waiting for ${beside_name} (in the background since $((SECONDS - beside_t0))s ago)"
  wait "${beside_pid}" || rc=$?
  beside_pid=""
  cat "${beside_log}"
  rm -f "${beside_log}"
  counted "${beside_name}" "${rc}" "$((SECONDS - beside_t0))" "in the background"
}

stage_unit() {
  local tree any=0
  for tree in app/tests tests/unit; do
    if has_tests "${tree}"; then
      any=1
      if [[ ${tree} == app/tests && ${unit_beside} == 1 ]]; then
        continue  # started with the pipeline (below)
      fi
      step "unit ${tree}" python -m pytest -q "${tree}"
    else
      echo "run_ci: ${tree}: no tests there yet, skipped"
    fi
  done
  ((any)) || echo "run_ci: unit: nothing to run"
}

# In a run that has the integration stage, the scenarios it checks on its own lab (their converge
# there, then their verify.yml: tests/integration.sh --verifies) are not built a lab of their own.
on_integration_lab=()
stage_molecule() {
  local dir name any=0
  teardown_labs=1
  image_wait
  step "lab selftest" tests/lab/selftest.sh
  for dir in molecule/*/; do
    name=$(basename "${dir}")
    [[ ${name} == _* || ! -f ${dir}molecule.yml ]] && continue
    if [[ " ${on_integration_lab[*]} " == *" ${name} "* ]]; then
      echo "run_ci: molecule ${name}: checked by the integration stage on its lab (converge, then verify.yml)"
      continue
    fi
    any=1
    step "molecule ${name}" molecule test -s "${name}"
  done
  ((any)) || echo "run_ci: molecule: no scenarios"
  beside_wait
}

stage_integration() {
  teardown_labs=1
  image_wait
  # scope ci: every integration stage but the node rebuild (make integration runs that too)
  step integration env INTEGRATION_SCOPE="${INTEGRATION_SCOPE:-ci}" tests/integration.sh
}

stages=("$@")
((${#stages[@]})) || stages=(lint unit molecule integration)
for s in "${stages[@]}"; do
  case ${s} in
    molecule | integration) teardown_labs=1 ;;
    lint | unit) ;;
    *)
      echo "run_ci: unknown stage '${s}' (lint, unit, molecule, integration)" >&2
      exit 2
      ;;
  esac
done
[[ -x .venv/bin/python ]] || {
  echo "run_ci: .venv is missing: run 'make venv' first" >&2
  exit 1
}
# app/tests in the background when the run has unit then molecule (TPSERVE_CI_SERIAL=1: one at a time)
unit_beside=0
if [[ " ${stages[*]} " == *" unit "* && " ${stages[*]} " == *" molecule "* && -z ${TPSERVE_CI_SERIAL:-} ]]; then
  unit_beside=1
fi
if [[ " ${stages[*]} " == *" integration "* ]]; then
  mapfile -t on_integration_lab < <(tests/integration.sh --verifies)
fi
if ((teardown_labs)); then image_prefetch; fi
if ((unit_beside)) && has_tests app/tests; then beside_start app/tests; fi
for s in "${stages[@]}"; do "stage_${s}"; done
beside_wait
