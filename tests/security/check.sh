#!/usr/bin/env bash
# Security checks. Static part (no lab needed) + live part on the lab with the service up.
#
#   tests/security/check.sh static     # grep the repo: no password auth, host key checking on
#   tests/security/check.sh live       # lab nodes (LAB_INVENTORY): sshd -T, cluster key, unit
#                                      # hardening, bind address, Vault secrets absent from
#                                      # journal and ps on every node
#   tests/security/check.sh            # both
#
# The live part re-runs serve.yml with tpserve_api_key and model_hf_token from a Vault-encrypted
# file (throwaway password made here), greps for both, then runs serve.yml again without them
# (the service ends as it started: no API key). Every check prints PASS/FAIL; exit 1 on any FAIL.
# pass/fail always return 0, so `test && pass ... || fail ...` is a safe if/else here; single-quoted
# remote commands expand on the node on purpose.
# shellcheck disable=SC2015,SC2016
set -euo pipefail
TEST_NAME=security
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mode=${1:-all}
fails=0
pass() { printf '  PASS  %s\n' "$*"; }
fail() {
  printf '  FAIL  %s\n' "$*"
  fails=$((fails + 1))
}

static_checks() {
  printf '\n=== security: static (roles, playbooks, group_vars, inventories, ansible.cfg)\n'
  local paths=(roles playbooks site.yml serve.yml smoketest.yml group_vars inventory ansible.cfg molecule)
  local hits
  hits=$(grep -rnIiE --exclude="*.md" \
    'PasswordAuthentication[[:space:]=]+"?yes|KbdInteractiveAuthentication[[:space:]=]+"?yes|PermitEmptyPasswords[[:space:]=]+"?yes' \
    "${paths[@]}" 2>/dev/null || true)
  [[ -z ${hits} ]] && pass "nothing enables SSH password authentication" ||
    fail "SSH password authentication enabled:"$'\n'"${hits}"
  hits=$(grep -rnIiE --exclude="*.md" \
    'StrictHostKeyChecking[[:space:]=]+"?(no|off|accept-new)|UserKnownHostsFile[[:space:]=]+/dev/null|host_key_checking[[:space:]]*[=:][[:space:]]*"?(false|no|0)|ANSIBLE_HOST_KEY_CHECKING[^[:alnum:]]+"?(false|no|0)' \
    "${paths[@]}" 2>/dev/null || true)
  [[ -z ${hits} ]] && pass "nothing disables host key checking" ||
    fail "host key checking disabled:"$'\n'"${hits}"
  if grep -nE '^[[:space:]]*host_key_checking[[:space:]]*=[[:space:]]*(True|true|yes|1)' ansible.cfg >/dev/null ||
    ! grep -nE '^[[:space:]]*host_key_checking' ansible.cfg >/dev/null; then
    pass "ansible.cfg keeps host key checking on"
  else
    fail "ansible.cfg sets host_key_checking off"
  fi
  # Every task that writes or passes a secret (secret.env, HF_TOKEN) hides it from the output.
  hits=$(grep -rlE 'secret\.env|HF_TOKEN' roles/*/tasks 2>/dev/null | while read -r f; do
    grep -q 'no_log' "${f}" || echo "${f}"
  done)
  [[ -z ${hits} ]] && pass "task files writing secret.env / HF_TOKEN use no_log" ||
    fail "secret written without no_log in: ${hits}"
  # No secret travels through a task's `environment:` (Ansible puts it on the command line it runs,
  # visible in ps): API keys and tokens go in 0600 files (smoketest --api-key-file, HF_TOKEN_PATH).
  local py=python3
  [[ -x .venv/bin/python ]] && py=.venv/bin/python
  if hits=$("${py}" tests/security/secret_env.py "${paths[@]}" 2>&1); then
    pass "no task passes an API key, token or password through environment:"
  else
    fail "secret passed through environment: (use a 0600 file):"$'\n'"${hits}"
  fi
}

live_checks() {
  # shellcheck source=tests/chaos/lib.sh
  source tests/chaos/lib.sh
  local nodes=("${MASTER}" "${WORKERS[@]}") n out
  printf '\n=== security: live on %s (%s)\n' "${INVENTORY}" "${nodes[*]}"
  for n in "${nodes[@]}"; do
    out=$(node_sh "${n}" "sshd -T 2>/dev/null | grep -iE '^(passwordauthentication|permitemptypasswords|kbdinteractiveauthentication) '" |
      tr '\n' ' ')
    # sshd's compiled default on Debian is PasswordAuthentication yes; what matters is that no
    # account can use a password: every shadow entry is locked (!, *) - checked below.
    if grep -q 'permitemptypasswords no' <<<"${out}"; then pass "${n}: sshd -T: ${out}"; else fail "${n}: sshd -T: ${out}"; fi
    out=$(node_sh "${n}" "awk -F: '\$2 !~ /^[!*]/ {print \$1}' /etc/shadow")
    [[ -z ${out} ]] && pass "${n}: no account has a usable password (all locked)" ||
      fail "${n}: accounts with a usable or empty password: ${out}"
    out=$(node_sh "${n}" "grep -rhiE '^[[:space:]]*PasswordAuthentication[[:space:]]+yes' /etc/ssh/sshd_config /etc/ssh/sshd_config.d/ 2>/dev/null || true")
    [[ -z ${out} ]] && pass "${n}: sshd_config does not switch password auth on" ||
      fail "${n}: sshd_config: ${out}"
  done

  out=$(node_sh "${MASTER}" 'f=$(getent passwd tpserve | cut -d: -f6)/.ssh/id_ed25519;
    stat -c "%U %a" "$f"; ssh-keygen -l -f "$f" | awk "{print \$NF}"' | tr '\n' ' ')
  [[ ${out} == "tpserve 600 (ED25519) " ]] && pass "${MASTER}: cluster key: ${out}" ||
    fail "${MASTER}: cluster key (want 'tpserve 600 (ED25519)'): ${out}"

  local units
  for n in "${nodes[@]}"; do
    units=$(node_sh "${n}" "systemctl list-units --type=service --state=running --no-legend 'tpserve*' | awk '{print \$1}'" | tr '\n' ' ')
    [[ -n ${units// /} ]] || {
      fail "${n}: no running tpserve unit"
      continue
    }
    for u in ${units}; do
      out=$(node_sh "${n}" "systemctl show ${u} -p User -p NoNewPrivileges -p ProtectSystem -p ProtectHome -p PrivateTmp" | sort | tr '\n' ' ')
      [[ ${out} == "NoNewPrivileges=yes PrivateTmp=yes ProtectHome=yes ProtectSystem=strict User=tpserve " ]] &&
        pass "${n}: ${u}: ${out}" || fail "${n}: ${u}: ${out}"
      out=$(node_sh "${n}" "ps -eo unit=,user= | awk '\$1 == \"${u}\" {print \$2}'" | sort -u | tr '\n' ' ')
      [[ ${out} == "tpserve " ]] && pass "${n}: ${u}: every process runs as: ${out}" ||
        fail "${n}: ${u}: processes run as: ${out}"
    done
  done

  out=$(node_sh "${MASTER}" "ss -Hltn 'sport = :${API_PORT}' | awk '{print \$4}'" | tr '\n' ' ')
  [[ ${out} == "${MASTER_ADDR}:${API_PORT} " ]] && pass "${MASTER}: API listens on ${out}(cluster address only)" ||
    fail "${MASTER}: API listens on '${out}' (want ${MASTER_ADDR}:${API_PORT} only)"
  out=$(node_sh "${MASTER}" "ss -Hltnp | grep -e tpserve -e python | awk '{print \$4}' | sort -u" 2>/dev/null | tr '\n' ' ' || true)
  printf '  INFO  %s: all listening TCP sockets of the service: %s\n' "${MASTER}" "${out}"

  secrets_checks
}

secrets_checks() {
  local work pw vars api_key hf_token n out
  work=$(mktemp -d /tmp/tpserve-sec.XXXXXX)
  api_key="sk-sec-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  hf_token="hf_sec$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  pw=${work}/vault-pass
  (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"${pw}")
  vars=${work}/secrets.yml
  (umask 077 && printf 'tpserve_api_key: "%s"\nmodel_hf_token: "%s"\n' "${api_key}" "${hf_token}" >"${vars}")
  ansible-vault encrypt --vault-password-file "${pw}" "${vars}" >/dev/null
  if grep -qF -e "${api_key}" -e "${hf_token}" "${vars}"; then fail "vault file holds the secrets in clear"; fi
  head -n1 "${vars}" | grep -q '^\$ANSIBLE_VAULT' && pass "secrets file is Vault-encrypted" || fail "secrets file not encrypted"

  printf '\n=== security: serve.yml + smoketest.yml + site.yml --tags model with Vault secrets\n'
  local ev=(-e "@${vars}" --vault-password-file "${pw}")
  playbook "${work}/serve.log" serve.yml "${ev[@]}" && pass "serve.yml with the Vault API key" ||
    fail "serve.yml with the Vault API key (log: $(tail -n 20 "${work}/serve.log"))"
  playbook "${work}/smoke.log" smoketest.yml "${ev[@]}" && pass "smoketest.yml with the API key" ||
    fail "smoketest.yml with the API key (tail: $(tail -n 20 "${work}/smoke.log"))"
  playbook "${work}/model.log" site.yml --tags model "${ev[@]}" && pass "site.yml --tags model with the HF token" ||
    fail "site.yml --tags model with the HF token (tail: $(tail -n 20 "${work}/model.log"))"
  code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 "${API_URL}/v1/models")
  [[ ${code} == 401 ]] && pass "API without the key: 401" || fail "API without the key: ${code} (want 401)"
  code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 -H "Authorization: Bearer ${api_key}" "${API_URL}/v1/models")
  [[ ${code} == 200 ]] && pass "API with the Vault key: 200" || fail "API with the Vault key: ${code}"

  for n in "${MASTER}" "${WORKERS[@]}"; do
    out=$(node_sh "${n}" "journalctl --no-pager -o cat 2>/dev/null | grep -cF -e '${api_key}' -e '${hf_token}'; \
      ps -eo args | grep -v grep | grep -cF -e '${api_key}' -e '${hf_token}'; \
      grep -rlF -e '${api_key}' -e '${hf_token}' /var/log /var/lib/tpserve /opt/tpserve /tmp 2>/dev/null | wc -l" | tr '\n' ' ')
    [[ ${out} == "0 0 0 " ]] && pass "${n}: secrets absent from journal, ps args, /var/log, state dirs (${out})" ||
      fail "${n}: secret found (journal, ps, files counts: ${out})"
    out=$(node_sh "${n}" "stat -c '%U %a' /etc/tpserve/secret.env 2>/dev/null || echo none")
    [[ ${out} == "root 600" || ${out} == none ]] && pass "${n}: /etc/tpserve/secret.env: ${out}" ||
      fail "${n}: /etc/tpserve/secret.env is ${out} (want root 600)"
  done
  # The controller's ansible output must not show them either (no_log).
  if grep -lF -e "${api_key}" -e "${hf_token}" "${work}"/*.log >/dev/null 2>&1; then
    fail "a secret appears in ansible output: $(grep -lF -e "${api_key}" -e "${hf_token}" "${work}"/*.log)"
  else
    pass "secrets absent from the ansible-playbook output"
  fi

  printf '\n=== security: serve.yml without secrets (back to the open lab API)\n'
  playbook "${work}/serve-restore.log" serve.yml && pass "serve.yml restored (no API key)" ||
    fail "serve.yml restore (tail: $(tail -n 20 "${work}/serve-restore.log"))"
  rm -rf "${work}"
}

case ${mode} in
  static) static_checks ;;
  live) live_checks ;;
  all) static_checks && live_checks ;;
  *) echo "usage: $0 [static|live|all]" >&2 && exit 2 ;;
esac
printf '\n=== security: %s\n' "$( ((fails == 0)) && echo "all checks passed" || echo "${fails} check(s) FAILED")"
((fails == 0))
