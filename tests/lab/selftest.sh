#!/usr/bin/env bash
# Self-test of tests/lab/lab.sh on real podman nodes (root): bad knobs are refused, two labs
# coexist, a lab never touches what is not its own, a node that never boots tears the lab down,
# `up` twice reuses the nodes, `down` twice is safe and leaves podman as it found it.
# Uses two private 2-node labs (st-, st2-) on 10.89.40.0/24 and 10.89.41.0/24.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
LAB=tests/lab/lab.sh
work=$(mktemp -d /tmp/tpserve-lab-selftest.XXXXXX)
checks=0

lab_a() { LAB_NODES=2 LAB_PREFIX=st- LAB_SUBNET=10.89.40.0/24 LAB_NETWORK=tpserve-st LAB_INVENTORY=${work}/a "$@"; }
lab_b() { LAB_NODES=2 LAB_PREFIX=st2- LAB_SUBNET=10.89.41.0/24 LAB_NETWORK=tpserve-st2 LAB_INVENTORY=${work}/b "$@"; }
cleanup() {
  lab_a "${LAB}" down >/dev/null 2>&1 || true
  lab_b "${LAB}" down >/dev/null 2>&1 || true
  podman network rm -f tpserve-st-foreign >/dev/null 2>&1 || true
  rm -rf "${work}"
}
trap cleanup EXIT

ok() {
  checks=$((checks + 1))
  echo "selftest: ok - $*"
}
fail() {
  echo "selftest: FAILED - $*" >&2
  exit 1
}
# refused EXPECTED_TEXT CMD...: CMD must fail and say EXPECTED_TEXT.
refused() {
  local want=$1 out
  shift
  if out=$("$@" 2>&1); then fail "accepted: $* (wanted '${want}')"; fi
  [[ ${out} == *"${want}"* ]] || fail "wrong message for $*: ${out}"
  ok "refused: ${want}"
}
podman_state() { { podman ps -a --format '{{.Names}}' | sort; podman network ls --format '{{.Name}}' | sort; } | grep -v '^st2\?-\|^tpserve-st' || true; }

before=$(podman_state)

refused "LAB_NODES must be a whole number from 2 to 8" env LAB_NODES=9 "${LAB}" status
refused "LAB_NODES must be a whole number from 2 to 8" env LAB_NODES=08 "${LAB}" status
refused "LAB_SUBNET must be a private IPv4 /24" env LAB_SUBNET=10.89.40.0/16 "${LAB}" status
refused "LAB_PREFIX must be empty or lowercase" env LAB_PREFIX='x y' "${LAB}" status
refused "LAB_RELEASE must be one of: bookworm trixie" env LAB_RELEASE=sid "${LAB}" status
refused "usage:" "${LAB}" sideways

# Two labs at once, each with its own inventory and known_hosts.
lab_a "${LAB}" up >"${work}/a-up.log" 2>&1 || fail "lab a up: $(tail -5 "${work}/a-up.log")"
lab_b "${LAB}" up >"${work}/b-up.log" 2>&1 || fail "lab b up: $(tail -5 "${work}/b-up.log")"
for inv in a b; do
  [[ $(grep -c 'ansible_host:' "${work}/${inv}/hosts.yml") == 2 ]] || fail "${inv}/hosts.yml has not 2 hosts"
  [[ -L ${work}/${inv}/group_vars ]] || fail "${inv}/group_vars is not a symlink to the lab settings"
done
grep -q '^st-te1,10.89.40.11 ssh-ed25519 ' "${work}/a/.ssh/known_hosts" || fail "known_hosts of lab a lacks st-te1 by name and IP"
ok "two labs up side by side, inventories and known_hosts written"
for ip in 10.89.40.11 10.89.40.12 10.89.41.11 10.89.41.12; do
  inv=${work}/a
  [[ ${ip} == 10.89.41.* ]] && inv=${work}/b
  name=$(ssh -i "${inv}/.ssh/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o UserKnownHostsFile="${inv}/.ssh/known_hosts" -o StrictHostKeyChecking=yes "root@${ip}" hostname) ||
    fail "ssh with host key checking to ${ip}"
  [[ ${name} == st*-te[12] ]] || fail "${ip} says it is '${name}'"
done
ok "ssh with host key checking reaches all 4 nodes, hostnames right"

# A lab refuses what is not its own.
refused "is already used" env LAB_NODES=2 LAB_PREFIX=st3- LAB_SUBNET=10.89.40.0/24 LAB_NETWORK=tpserve-st3 \
  LAB_INVENTORY="${work}/c" "${LAB}" up
refused "is not part of lab" env LAB_NODES=2 LAB_PREFIX=st- LAB_SUBNET=10.89.42.0/24 LAB_NETWORK=tpserve-st3 \
  LAB_INVENTORY="${work}/c" "${LAB}" up
podman network create --subnet 10.89.43.0/24 tpserve-st-foreign >/dev/null
refused "is not a tpserve lab" env LAB_NODES=2 LAB_PREFIX=st3- LAB_SUBNET=10.89.42.0/24 LAB_NETWORK=tpserve-st-foreign \
  LAB_INVENTORY="${work}/c" "${LAB}" up
podman network rm tpserve-st-foreign >/dev/null

# up again: reused, fast.
lab_a "${LAB}" up >"${work}/a-up2.log" 2>&1 || fail "lab a second up"
grep -q 'nodes: 0 started, 2 reused' "${work}/a-up2.log" || fail "second up did not reuse: $(cat "${work}/a-up2.log")"
ok "second up reuses both nodes"

# down twice; lab b untouched by lab a's down.
lab_a "${LAB}" down >/dev/null 2>&1 || fail "lab a down"
lab_a "${LAB}" down >/dev/null 2>&1 || fail "lab a second down"
[[ ! -e ${work}/a/hosts.yml ]] || fail "down left hosts.yml"
[[ $(podman ps --filter label=tpserve.lab=tpserve-st2 --format '{{.Names}}' | wc -l) == 2 ]] ||
  fail "lab a's down touched lab b"
ok "down twice is safe and leaves the other lab alone"

# A node that never boots (timeout 0 s: the first probe after `podman run` always finds systemd starting): the error names it and the half-made lab is removed.
if out=$(LAB_BOOT_TIMEOUT=0 lab_a "${LAB}" up 2>&1); then fail "up with a 0 s boot timeout succeeded"; fi
[[ ${out} == *"never finished booting within 0s: st-te"* && ${out} == *"tearing the half-made lab down"* ]] ||
  fail "boot timeout message: ${out}"
[[ -z $(podman ps -a --filter label=tpserve.lab=tpserve-st --format '{{.Names}}') ]] || fail "half-made lab left behind"
ok "a node that never boots is named and the half-made lab is torn down"

lab_b "${LAB}" down >/dev/null 2>&1 || fail "lab b down"
[[ $(podman_state) == "${before}" ]] || fail "podman containers/networks differ from before the test"
ok "podman ps -a / podman network ls as before"
echo "selftest: ${checks} checks passed"
