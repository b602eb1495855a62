# shellcheck shell=bash
# Shared helpers for tests/chaos, tests/load and tests/security (sourced, not run).
# Talks only to the lab nodes of LAB_INVENTORY (default inventory/lab) over ssh with the lab's key
# and known_hosts (host key checking stays on) and to their API over HTTP.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH="${REPO}/.venv/bin:${PATH}"
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
INVENTORY=${LAB_INVENTORY:-inventory/lab}
[[ ${INVENTORY} == /* ]] || INVENTORY=${REPO}/${INVENTORY}
case ${INVENTORY} in
  */inventory/jakarta*) echo "refusing to run against ${INVENTORY}: not a lab" >&2 && exit 2 ;;
esac
[[ -f ${INVENTORY}/hosts.yml ]] || {
  echo "no lab inventory at ${INVENTORY}/hosts.yml: make lab-up (or set LAB_INVENTORY)" >&2
  exit 2
}
PY=${REPO}/.venv/bin/python

say() { printf '\n=== %s: %s\n' "${TEST_NAME:-tpserve}" "$*"; }
die() {
  printf '=== %s: FAILED: %s\n' "${TEST_NAME:-tpserve}" "$*" >&2
  exit 1
}

# inv_json: the lab inventory as JSON (cached for the run).
inv_json() {
  [[ -n ${_INV_JSON:-} ]] || _INV_JSON=$(ansible-inventory -i "${INVENTORY}" --list 2>/dev/null)
  printf '%s' "${_INV_JSON}"
}
# hosts_of GROUP: inventory host names of a group, one a line.
hosts_of() {
  inv_json | "${PY}" -c '
import json, sys
inv = json.load(sys.stdin)
def walk(g):
    node = inv.get(g, {})
    out = list(node.get("hosts", []))
    for child in node.get("children", []):
        out += walk(child)
    return out
print("\n".join(dict.fromkeys(walk(sys.argv[1]))))' "$1"
}
# addr_of HOST: its ansible_host.
addr_of() {
  inv_json | "${PY}" -c 'import json,sys; print(json.load(sys.stdin)["_meta"]["hostvars"][sys.argv[1]]["ansible_host"])' "$1"
}
MASTER=$(hosts_of tpserve_master | head -n1)
# shellcheck disable=SC2034 # used by the scripts that source this file
mapfile -t WORKERS < <(hosts_of tpserve_workers)
MASTER_ADDR=$(addr_of "${MASTER}")
API_PORT=${TPSERVE_PORT:-8000}
API_URL=${TPSERVE_URL:-http://${MASTER_ADDR}:${API_PORT}}

# node_sh HOST CMD: run CMD as root on a lab node (ssh, the lab's key, host key checking on).
node_sh() {
  local host=$1
  shift
  ssh -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="${INVENTORY}/.ssh/known_hosts" -o IdentitiesOnly=yes \
    -i "${INVENTORY}/.ssh/id_ed25519" "root@$(addr_of "${host}")" "$@"
}

# container_of HOST: the podman container of a lab node (the node's name is the container's).
container_of() { printf '%s' "$1"; }

# playbook LOG PLAYBOOK ARGS...: run a playbook on the lab, keep its output in LOG; returns its rc.
# CHAOS_PLAYBOOK_ARGS: extra arguments for every run (e.g. "-e tpserve_tp_size=3" on a 3-node lab).
playbook() {
  local log=$1 extra=()
  shift
  read -r -a extra <<<"${CHAOS_PLAYBOOK_ARGS:-}"
  ansible-playbook -i "${INVENTORY}" ${extra[@]+"${extra[@]}"} "$@" >"${log}" 2>&1
}

# health_ok: /health answers 200 with status ok.
health_ok() {
  curl -fsS -m 5 "${API_URL}/health" 2>/dev/null | grep -qE '"status": *"(ok|ready)"'
}

# chat_ok: one real chat completion (4 tokens) answers 200 with a choice and generated tokens: /health alone can
# be answered by a rank 0 whose group is still forming. TPSERVE_API_KEY is sent when set.
chat_ok() {
  local auth=()
  [[ -z ${TPSERVE_API_KEY:-} ]] || auth=(-H "Authorization: Bearer ${TPSERVE_API_KEY}")
  curl -fsS -m 120 "${auth[@]}" -H 'content-type: application/json' "${API_URL}/v1/chat/completions" \
    -d "{\"model\": \"${TPSERVE_MODEL_NAME:-tiny-qwen2-synthetic}\", \"max_tokens\": 4, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}" 2>/dev/null |
    "${PY}" -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["choices"] and d["usage"]["completion_tokens"] > 0 else 1)' 2>/dev/null
}

# wait_health SECONDS: wait until health_ok; prints the seconds it took; rc 1 on timeout.
wait_health() {
  local limit=$1 t0=${SECONDS}
  while ((SECONDS - t0 < limit)); do
    if health_ok; then
      echo $((SECONDS - t0))
      return 0
    fi
    sleep 1
  done
  return 1
}

# rank0_pid: PID of rank 0 (the tpserve process with --local_rank=0 on the master).
rank0_pid() {
  node_sh "${MASTER}" "pgrep -u tpserve -f -- 'tpserve.*--local_rank=0' | head -n1"
}
# rank0_rss_kib: resident memory of rank 0 in KiB.
rank0_rss_kib() {
  local pid
  pid=$(rank0_pid)
  [[ -n ${pid} ]] || return 1
  node_sh "${MASTER}" "awk '/^VmRSS/ {print \$2}' /proc/${pid}/status"
}
