#!/usr/bin/env bash
# The local lab: N Debian podman nodes (systemd + sshd) on a private bridge: Debian 12 (bookworm,
# the default) or Debian 13 (trixie), chosen by LAB_RELEASE.
#
#   tests/lab/lab.sh up|down|status|image
#
# `image` only makes sure the node image is there (built with debootstrap or loaded from the cache
# archive): tests/run_ci.sh starts it in the background at the start of a pipeline, so a fresh
# machine builds the image while lint and the unit tests run.
#
# Knobs (environment):
#   LAB_NODES      number of nodes, 2..8 (default 4)
#   LAB_PREFIX     container/host name prefix (default ""): nodes are ${LAB_PREFIX}te1..teN
#   LAB_SUBNET     IPv4 /24 of the bridge (default 10.89.7.0/24); nodes get .11, .12, ...
#   LAB_NETWORK    podman network name (default tpserve-lab); it also names the lab
#   LAB_INVENTORY  inventory dir written by `up` (default inventory/lab; relative = to the repo root)
#   LAB_CACHE      image archive cache (default /var/cache/tpserve-lab)
#   LAB_RELEASE    Debian release of the nodes: bookworm (Debian 12, default) | trixie (Debian 13);
#                  the image is localhost/tpserve-labnode:<release>, the nodes' apt sources are that release's
#   LAB_MIRROR, LAB_SECURITY_MIRROR   Debian mirrors for the node image (and the nodes' apt sources)
#   LAB_BOOT_TIMEOUT  seconds to wait for every node to boot and answer ssh (default 180)
#
# Everything this script creates carries the label tpserve.lab=<LAB_NETWORK>; `down` removes only
# that. Facts behind the podman flags: /work/shared/notes/lab.md.
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "${LAB_DIR}/../.." && pwd)

LAB_NODES=${LAB_NODES:-4}
LAB_PREFIX=${LAB_PREFIX:-}
LAB_SUBNET=${LAB_SUBNET:-10.89.7.0/24}
LAB_NETWORK=${LAB_NETWORK:-tpserve-lab}
LAB_INVENTORY=${LAB_INVENTORY:-inventory/lab}
LAB_CACHE=${LAB_CACHE:-/var/cache/tpserve-lab}
LAB_RELEASE=${LAB_RELEASE:-bookworm}
LAB_MIRROR=${LAB_MIRROR:-http://deb.debian.org/debian}
LAB_SECURITY_MIRROR=${LAB_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
LAB_BOOT_TIMEOUT=${LAB_BOOT_TIMEOUT:-180}
# Empty = Ansible logs in as root. A name = the nodes refuse root SSH (PermitRootLogin no) and give
# this user the lab key and passwordless sudo; hosts.yml says ansible_user=<it>, ansible_become=true
# (like an Ubuntu cloud image's default user).
LAB_SSH_USER=${LAB_SSH_USER:-}

# The Debian releases node-image.sh builds (12, 13); the image is tagged with the release.
readonly RELEASES=(bookworm trixie)
readonly RECIPE=${LAB_DIR}/node-image.sh
readonly LABEL=tpserve.lab
readonly PREREQ_PACKAGES=(podman runc debootstrap zstd openssh-client pdsh rsync)

# podman hands open descriptors to conmon, which outlives us: never let it inherit our lock fds.
podman() { command podman "$@" 8>&- 9>&-; }

log() { printf 'lab: %s\n' "$*" >&2; }
die() {
  printf 'lab: ERROR: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------- validation
validate() {
  if ! [[ ${LAB_NODES} =~ ^[1-9][0-9]*$ ]] || ((LAB_NODES < 2 || LAB_NODES > 8)); then
    die "LAB_NODES must be a whole number from 2 to 8 (got '${LAB_NODES}')"
  fi
  [[ -z ${LAB_PREFIX} || ${LAB_PREFIX} =~ ^[a-z][a-z0-9-]{0,20}$ ]] ||
    die "LAB_PREFIX must be empty or lowercase letters, digits and '-', starting with a letter (got '${LAB_PREFIX}')"
  [[ ${LAB_SUBNET} =~ ^(10|172|192)\.[0-9]{1,3}\.[0-9]{1,3}\.0/24$ ]] ||
    die "LAB_SUBNET must be a private IPv4 /24 such as 10.89.7.0/24 (got '${LAB_SUBNET}')"
  [[ ${LAB_NETWORK} =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,40}$ ]] ||
    die "LAB_NETWORK must be a plain name such as tpserve-lab (got '${LAB_NETWORK}')"
  [[ " ${RELEASES[*]} " == *" ${LAB_RELEASE} "* ]] ||
    die "LAB_RELEASE must be one of: ${RELEASES[*]} (Debian 12 | Debian 13; got '${LAB_RELEASE}')"
  IMAGE=localhost/tpserve-labnode:${LAB_RELEASE}
  [[ ${LAB_BOOT_TIMEOUT} =~ ^[0-9]+$ ]] || die "LAB_BOOT_TIMEOUT must be seconds (got '${LAB_BOOT_TIMEOUT}')"
  [[ -z ${LAB_SSH_USER} || (${LAB_SSH_USER} =~ ^[a-z_][a-z0-9_-]{0,30}$ && ${LAB_SSH_USER} != root) ]] ||
    die "LAB_SSH_USER must be empty (root) or a user name other than root (got '${LAB_SSH_USER}')"
  [[ ${LAB_INVENTORY} == /* ]] || LAB_INVENTORY=${REPO_ROOT}/${LAB_INVENTORY}
  NET_BASE=${LAB_SUBNET%.0/24}
  SSH_DIR=${LAB_INVENTORY}/.ssh
  KEY=${SSH_DIR}/id_ed25519
  KNOWN_HOSTS=${SSH_DIR}/known_hosts
  HOSTS_FILE=${LAB_INVENTORY}/hosts.yml
}

node_name() { printf '%ste%d' "${LAB_PREFIX}" "$1"; }
node_ip() { printf '%s.%d' "${NET_BASE}" "$((10 + $1))"; }
# The recipe is the script plus the release it builds: another release is another image.
recipe_hash() { { cat "${RECIPE}" && echo "release=${LAB_RELEASE}"; } | sha256sum | cut -c1-16; }

# --------------------------------------------------------------------------- prerequisites
ensure_prereqs() {
  ((EUID == 0)) || die "the lab needs root (rootful podman with a routed bridge, debootstrap)"
  local missing=() pkg
  for pkg in "${PREREQ_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'ok installed' || missing+=("${pkg}")
  done
  if ((${#missing[@]})); then
    log "installing missing packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
      die "could not install ${missing[*]} (run: apt-get update && apt-get install -y ${missing[*]})"
  fi
  mkdir -p "${LAB_CACHE}/locks"
  ensure_sysctls
}

# Every node's systemd needs inotify instances; with the default 128 per user, nodes beyond the
# ~20th container on the host exit at once (255, no output). Raised at runtime only, never lowered.
ensure_sysctls() {
  local key want have
  for key in fs.inotify.max_user_instances=1024 fs.inotify.max_user_watches=524288; do
    want=${key#*=}
    have=$(sysctl -n "${key%%=*}")
    if ((have < want)); then
      log "raising ${key%%=*} from ${have} to ${want} (systemd in every node needs inotify)"
      sysctl -q -w "${key}"
    fi
  done
}

# ------------------------------------------------------------------------------ node image
image_recipe() { podman image inspect --format "{{index .Labels \"lab.recipe\"}}" "${IMAGE}" 2>/dev/null || true; }

ensure_image() {
  local hash archive work
  hash=$(recipe_hash)
  archive=${LAB_CACHE}/labnode-${LAB_RELEASE}-${hash}.tar.zst
  # One builder at a time, even with several labs starting together.
  exec 8>"${LAB_CACHE}/locks/image.lock"
  flock 8
  if [[ $(image_recipe) == "${hash}" ]]; then
    log "node image ${IMAGE} is current (recipe ${hash})"
  elif [[ -s ${archive} ]]; then
    log "loading node image from ${archive}"
    zstd -dc "${archive}" | podman load -q >/dev/null
    [[ $(image_recipe) == "${hash}" ]] || die "${archive} did not hold recipe ${hash}; delete it and retry"
  else
    log "building node image ${IMAGE} (recipe ${hash}) with debootstrap from ${LAB_MIRROR}"
    work=$(mktemp -d /var/tmp/tpserve-labnode.XXXXXX)
    (
      trap 'rm -rf "${work}"' EXIT
      bash "${RECIPE}" "${work}/root" "${LAB_MIRROR}" "${LAB_SECURITY_MIRROR}" "${LAB_RELEASE}"
      tar -C "${work}/root" --numeric-owner -c . |
        podman import -q \
          --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' \
          --change 'ENV container=podman' --change "LABEL lab.recipe=${hash}" \
          --change "LABEL lab.release=${LAB_RELEASE}" \
          - "${IMAGE}" >/dev/null
    ) || die "building the node image failed (see above)"
    log "saving ${archive} for later runs"
    podman save "${IMAGE}" | zstd -q -3 -T0 -o "${archive}.tmp" && mv "${archive}.tmp" "${archive}"
    # older archives of this release only: the other release's image stays cached
    find "${LAB_CACHE}" -maxdepth 1 -name "labnode-${LAB_RELEASE}-*.tar.zst" \
      ! -name "labnode-${LAB_RELEASE}-${hash}.tar.zst" -delete
  fi
  flock -u 8
  RECIPE_HASH=${hash}
}

# ------------------------------------------------------------------------- ownership checks
container_owner() { podman container inspect --format "{{index .Config.Labels \"${LABEL}\"}}" "$1" 2>/dev/null; }
network_owner() { podman network inspect --format "{{index .Labels \"${LABEL}\"}}" "$1" 2>/dev/null; }
network_exists() { podman network exists "$1"; }
container_exists() { podman container exists "$1"; }

# Reads "WHAT SUBNET" lines; prints the first WHAT whose subnet overlaps $1.
first_overlap() {
  python3 -c 'import ipaddress, sys
lab = ipaddress.ip_network(sys.argv[1], strict=False)
hits = []
for line in sys.stdin:
    what, _, net = line.strip().rpartition(" ")
    try:
        if ipaddress.ip_network(net, strict=False).overlaps(lab):
            hits.append(f"{what} {net}")
    except ValueError:
        pass
print(hits[0] if hits else "")' "$1"
}

check_not_taken() {
  local i name net subnet clash our_dev=""
  if network_exists "${LAB_NETWORK}"; then
    [[ $(network_owner "${LAB_NETWORK}") == "${LAB_NETWORK}" ]] ||
      die "podman network '${LAB_NETWORK}' exists and is not a tpserve lab: choose another LAB_NETWORK"
    subnet=$(podman network inspect --format '{{range .Subnets}}{{.Subnet}} {{end}}' "${LAB_NETWORK}")
    [[ ${subnet% } == "${LAB_SUBNET}" ]] ||
      die "lab network '${LAB_NETWORK}' already exists with subnet ${subnet% }, not ${LAB_SUBNET}: run 'down' first"
    our_dev=$(podman network inspect --format '{{.NetworkInterface}}' "${LAB_NETWORK}")
  fi
  clash=$(
    {
      while read -r net; do
        [[ ${net} == "${LAB_NETWORK}" ]] && continue
        for subnet in $(podman network inspect --format '{{range .Subnets}}{{.Subnet}} {{end}}' "${net}"); do
          echo "podman-network ${net} ${subnet}"
        done
      done < <(podman network ls --format '{{.Name}}')
      ip -4 route show | awk -v ours="${our_dev}" \
        '$1 != "default" { for (i = 1; i < NF; i++) if ($i == "dev" && $(i + 1) != ours) print "route-on", $(i + 1), $1 }'
    } | first_overlap "${LAB_SUBNET}"
  )
  [[ -z ${clash} ]] || die "LAB_SUBNET ${LAB_SUBNET} is already used (${clash}): choose another LAB_SUBNET"
  for ((i = 1; i <= LAB_NODES; i++)); do
    name=$(node_name "${i}")
    if container_exists "${name}" && [[ $(container_owner "${name}") != "${LAB_NETWORK}" ]]; then
      die "a container named '${name}' exists and is not part of lab '${LAB_NETWORK}': choose another LAB_PREFIX"
    fi
  done
}

# ------------------------------------------------------------------------------ the nodes
our_containers() { podman ps -a --filter "label=${LABEL}=${LAB_NETWORK}" --format '{{.Names}}'; }

ensure_key() {
  mkdir -p "${SSH_DIR}"
  chmod 0700 "${SSH_DIR}"
  if [[ ! -s ${KEY} || ! -s ${KEY}.pub ]]; then
    rm -f "${KEY}" "${KEY}.pub"
    ssh-keygen -q -t ed25519 -N '' -C "tpserve-lab-${LAB_NETWORK}" -f "${KEY}"
  fi
  chmod 0600 "${KEY}"
  chmod 0644 "${KEY}.pub"
}

ensure_network() {
  network_exists "${LAB_NETWORK}" && return 0
  log "creating network ${LAB_NETWORK} (${LAB_SUBNET})"
  podman network create --disable-dns --subnet "${LAB_SUBNET}" --gateway "${NET_BASE}.1" \
    --label "${LABEL}=${LAB_NETWORK}" "${LAB_NETWORK}" >/dev/null
}

systemd_state() { podman exec "$1" systemctl is-system-running 2>/dev/null || true; }

# One exec per node: line 1 = systemd state, line 2 = sha256 of authorized_keys, then host keys.
probe_node() {
  podman exec "$1" sh -c 'state=$(systemctl is-system-running 2>/dev/null); echo "${state:-none}"
    sha256sum </root/.ssh/authorized_keys | cut -d" " -f1
    [ -s /etc/ssh/ssh_host_ed25519_key.pub ] && cat /etc/ssh/ssh_host_*_key.pub' 2>/dev/null || true
}

# Probe the named nodes in parallel into ${PROBES}/<name>.
probe_all() {
  local name
  for name in "$@"; do probe_node "${name}" >"${PROBES}/${name}" & done
  wait
}

probe_state() { sed -n 1p "${PROBES}/$1"; }
probe_keys() { sed -n '3,$p' "${PROBES}/$1"; }

# "NAME STATE RECIPE IP" for every container of this lab.
lab_inventory_rows() {
  local names
  mapfile -t names < <(podman ps -a --filter "label=${LABEL}=${LAB_NETWORK}" --format '{{.Names}}')
  ((${#names[@]})) || return 0
  podman container inspect --format \
    "{{.Name}} {{.State.Status}} {{index .Config.Labels \"${LABEL}.recipe\"}} {{index .Config.Labels \"${LABEL}.ip\"}}" \
    "${names[@]}"
}

start_node() {
  local name=$1 ip=$2
  podman run -d -q --name "${name}" --hostname "${name}" \
    --runtime runc --systemd=always \
    --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
    --cap-add SYS_ADMIN --cap-add NET_RAW --cap-add AUDIT_WRITE \
    --no-hosts --network "${LAB_NETWORK}" --ip "${ip}" --shm-size 1g \
    --label "${LABEL}=${LAB_NETWORK}" --label "${LABEL}.recipe=${RECIPE_HASH}" --label "${LABEL}.ip=${ip}" \
    --label "${LABEL}.release=${LAB_RELEASE}" \
    -v "${KEY}.pub:/root/.ssh/authorized_keys:ro" \
    "${IMAGE}" >/dev/null
}

# ssh_ok IP [USER]: sshd answers USER (default root) with the lab key, host key checking on. A
# reused node of a LAB_SSH_USER lab refuses root: its user counts then.
ssh_ok() {
  local user
  for user in ${2:-root ${LAB_SSH_USER}}; do
    ssh -q -i "${KEY}" -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=3 \
      -o UserKnownHostsFile="${KNOWN_HOSTS}" -o StrictHostKeyChecking=yes \
      "${user}@$1" true </dev/null 2>/dev/null && return 0
  done
  return 1
}

# LAB_SSH_USER: each node gets the user (the lab key, NOPASSWD sudo) and refuses root SSH; then
# the user must log in and sudo, and root must be refused. Idempotent (reused nodes).
make_nonroot() {
  local i name ip
  for ((i = 1; i <= LAB_NODES; i++)); do
    name=$(node_name "${i}")
    ip=$(node_ip "${i}")
    podman exec "${name}" /bin/sh -ec "
      u='${LAB_SSH_USER}'
      id \"\$u\" >/dev/null 2>&1 || useradd -m -s /bin/bash \"\$u\"
      home=\$(getent passwd \"\$u\" | cut -d: -f6)
      install -d -o \"\$u\" -g \"\$u\" -m 700 \"\$home/.ssh\"
      install -o \"\$u\" -g \"\$u\" -m 600 /root/.ssh/authorized_keys \"\$home/.ssh/authorized_keys\"
      printf '%s ALL=(ALL) NOPASSWD:ALL\\n' \"\$u\" >/etc/sudoers.d/lab-ssh-user
      chmod 0440 /etc/sudoers.d/lab-ssh-user
      if [ \"\$(cat /etc/ssh/sshd_config.d/10-lab-noroot.conf 2>/dev/null)\" != 'PermitRootLogin no' ]; then
        echo 'PermitRootLogin no' >/etc/ssh/sshd_config.d/10-lab-noroot.conf
        systemctl restart ssh
      fi" || fail_up "${name}: could not set up the SSH user ${LAB_SSH_USER}"
    local n=0
    until ssh -q -i "${KEY}" -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=3 \
      -o UserKnownHostsFile="${KNOWN_HOSTS}" -o StrictHostKeyChecking=yes \
      "${LAB_SSH_USER}@${ip}" sudo -n true </dev/null 2>/dev/null; do
      ((++n < 20)) || fail_up "${name}: ${LAB_SSH_USER}@${ip} cannot log in and sudo"
      sleep 0.5
    done
    ! ssh_ok "${ip}" root || fail_up "${name}: root SSH still accepted"
  done
  log "nodes refuse root SSH; ${LAB_SSH_USER} logs in with the lab key and has passwordless sudo"
}

# known_hosts from each node's own host keys, read through podman (not trusted on first use).
write_known_hosts() {
  local i name tmp
  tmp=$(mktemp "${SSH_DIR}/known_hosts.XXXXXX")
  for ((i = 1; i <= LAB_NODES; i++)); do
    name=$(node_name "${i}")
    probe_keys "${name}" | awk -v hosts="${name},$(node_ip "${i}")" 'NF >= 2 { print hosts, $1, $2 }' >>"${tmp}"
  done
  chmod 0644 "${tmp}"
  mv "${tmp}" "${KNOWN_HOSTS}"
}

wait_for_nodes() {
  local start now i name ip state cstate pending=() failed=() key_sum
  local -A restarts=()
  start=${SECONDS}
  key_sum=$(sha256sum <"${KEY}.pub" | cut -d' ' -f1)
  # 1) systemd finished booting, sshd generated its host keys, our key is mounted.
  for ((i = 1; i <= LAB_NODES; i++)); do pending+=("$(node_name "${i}")"); done
  while :; do
    probe_all "${pending[@]}"
    failed=()
    for name in "${pending[@]}"; do
      state=$(probe_state "${name}")
      if [[ ${state} =~ ^(running|degraded)$ && $(sed -n 2p "${PROBES}/${name}") == "${key_sum}" ]] &&
        [[ -n $(probe_keys "${name}") ]]; then
        continue
      fi
      cstate=$(podman container inspect --format '{{.State.Status}} exit={{.State.ExitCode}} {{.State.Error}}' \
        "${name}" 2>&1) || cstate="inspect failed: ${cstate}"
      if [[ ${cstate} =~ ^(exited|stopped|dead) ]] && ((${restarts[${name}]:-0} < 2)); then
        # Seen rarely on this loaded host: a node exits (255, no output) right after `podman run`.
        restarts[${name}]=$((${restarts[${name}]:-0} + 1))
        log "node ${name} exited while booting (${cstate}): starting it again (${restarts[${name}]}/2)"
        podman start "${name}" >/dev/null || true
      elif [[ ${cstate} =~ ^(exited|stopped|dead|removing) || ${cstate} == *"no such container"* ]]; then
        fail_up "node ${name} stopped while booting (${cstate}): $(podman logs --tail 5 "${name}" 2>&1 | tr '\n' ' ')"
      fi
      failed+=("${name}(${state:-no systemd yet})")
    done
    ((${#failed[@]} == 0)) && break
    pending=("${failed[@]%%(*}")
    now=$((SECONDS - start))
    ((now < LAB_BOOT_TIMEOUT)) || fail_up "never finished booting within ${LAB_BOOT_TIMEOUT}s: ${failed[*]}"
    log "waiting for ${failed[*]} (${now}s/${LAB_BOOT_TIMEOUT}s)"
    sleep 1
  done
  write_known_hosts
  # 2) sshd answers with the key and host keys the inventory uses.
  while :; do
    for ((i = 1; i <= LAB_NODES; i++)); do
      ip=$(node_ip "${i}")
      { ssh_ok "${ip}" && : >"${PROBES}/ssh-${ip}"; } &
    done
    wait
    failed=()
    for ((i = 1; i <= LAB_NODES; i++)); do
      ip=$(node_ip "${i}")
      [[ -e ${PROBES}/ssh-${ip} ]] || failed+=("$(node_name "${i}")(${ip})")
    done
    ((${#failed[@]} == 0)) && break
    now=$((SECONDS - start))
    ((now < LAB_BOOT_TIMEOUT)) || fail_up "sshd never answered within ${LAB_BOOT_TIMEOUT}s on: ${failed[*]}"
    log "waiting for sshd on ${failed[*]} (${now}s/${LAB_BOOT_TIMEOUT}s)"
    sleep 1
  done
  log "all ${LAB_NODES} nodes booted and answer ssh ($((SECONDS - start))s)"
}

fail_up() {
  printf 'lab: ERROR: %s\n' "$*" >&2
  log "tearing the half-made lab down"
  do_down >&2 || true
  exit 1
}

# Host vars of a LAB_SSH_USER lab (host vars beat the lab's group_vars, which say root).
login_vars() {
  [[ -n ${LAB_SSH_USER} ]] || return 0
  printf '              ansible_user: %s\n              ansible_become: true\n' "${LAB_SSH_USER}"
}

write_inventory() {
  local i name tmp
  tmp=$(mktemp "${LAB_INVENTORY}/hosts.yml.XXXXXX")
  {
    printf -- '---\n# Generated by tests/lab/lab.sh up (lab %s, %s, Debian %s). Do not edit: lab.sh down removes it.\n' \
      "${LAB_NETWORK}" "${LAB_SUBNET}" "${LAB_RELEASE}"
    printf 'all:\n  children:\n    tpserve:\n      children:\n'
    printf '        tpserve_master:\n          hosts:\n'
    printf '            %s:\n              ansible_host: %s\n' "$(node_name 1)" "$(node_ip 1)"
    login_vars
    printf '        tpserve_workers:\n          hosts:\n'
    for ((i = 2; i <= LAB_NODES; i++)); do
      name=$(node_name "${i}")
      printf '            %s:\n              ansible_host: %s\n' "${name}" "$(node_ip "${i}")"
      login_vars
    done
  } >"${tmp}"
  chmod 0644 "${tmp}"
  mv "${tmp}" "${HOSTS_FILE}"
}

# A private inventory (LAB_INVENTORY elsewhere) shares the lab's committed settings.
link_group_vars() {
  local lab_gv=${REPO_ROOT}/inventory/lab/group_vars
  [[ $(realpath -m "${LAB_INVENTORY}") == $(realpath -m "${REPO_ROOT}/inventory/lab") ]] && return 0
  if [[ -L ${LAB_INVENTORY}/group_vars ]]; then
    ln -sfn "${lab_gv}" "${LAB_INVENTORY}/group_vars"
  elif [[ ! -e ${LAB_INVENTORY}/group_vars ]]; then
    ln -s "${lab_gv}" "${LAB_INVENTORY}/group_vars"
  else
    log "keeping the existing ${LAB_INVENTORY}/group_vars (not a symlink)"
  fi
}

# ---------------------------------------------------------------------------- commands
do_up() {
  local t0=${SECONDS} i name ip reused=0 started=0 key_sum
  ensure_prereqs
  exec 9>"${LAB_CACHE}/locks/${LAB_NETWORK}.lock"
  flock -w 600 9 || die "another up/down of lab ${LAB_NETWORK} is still running"
  check_not_taken
  ensure_image
  mkdir -p "${LAB_INVENTORY}"
  ensure_key
  ensure_network
  PROBES=$(mktemp -d /tmp/tpserve-lab-probes.XXXXXX)
  # shellcheck disable=SC2064  # PROBES is fixed from here on
  trap "rm -rf '${PROBES}'" EXIT
  # Reuse running nodes on the right image and address whose systemd is healthy; replace the rest
  # (and drop nodes beyond LAB_NODES left by an earlier, larger lab of the same name).
  declare -A row_ok=()
  local row_name row_state row_recipe row_ip running=()
  while read -r row_name row_state row_recipe row_ip; do
    if [[ ${row_name} =~ ^${LAB_PREFIX}te([0-9]+)$ ]] && ((BASH_REMATCH[1] <= LAB_NODES)) &&
      [[ ${row_state} == running && ${row_recipe} == "${RECIPE_HASH}" && ${row_ip} == "$(node_ip "${BASH_REMATCH[1]}")" ]]; then
      running+=("${row_name}")
      continue
    fi
    log "removing ${row_name} (${row_state}, outdated or not part of a ${LAB_NODES}-node lab)"
    podman rm -f -t 5 "${row_name}" >/dev/null
  done < <(lab_inventory_rows)
  if ((${#running[@]})); then
    probe_all "${running[@]}"
    key_sum=$(sha256sum <"${KEY}.pub" | cut -d' ' -f1)
    for row_name in "${running[@]}"; do
      if [[ $(probe_state "${row_name}") =~ ^(running|degraded)$ && $(sed -n 2p "${PROBES}/${row_name}") == "${key_sum}" ]]; then
        row_ok[${row_name}]=1
      else
        log "replacing ${row_name} (unhealthy or holding another key)"
        podman rm -f -t 5 "${row_name}" >/dev/null
      fi
    done
  fi
  for ((i = 1; i <= LAB_NODES; i++)); do
    name=$(node_name "${i}")
    ip=$(node_ip "${i}")
    if [[ -n ${row_ok[${name}]:-} ]]; then
      reused=$((reused + 1))
      continue
    fi
    start_node "${name}" "${ip}" || fail_up "podman could not start ${name} (${ip})"
    started=$((started + 1))
  done
  log "nodes: ${started} started, ${reused} reused"
  wait_for_nodes
  [[ -z ${LAB_SSH_USER} ]] || make_nonroot
  write_inventory
  link_group_vars
  log "lab ${LAB_NETWORK} (Debian ${LAB_RELEASE}) is up in $((SECONDS - t0))s: inventory ${LAB_INVENTORY}"
  do_status
}

do_down() {
  local names
  if ((EUID != 0)); then die "the lab needs root"; fi
  mapfile -t names < <(our_containers)
  if ((${#names[@]})); then
    log "removing ${names[*]}"
    podman rm -f -t 5 "${names[@]}" >/dev/null
  fi
  if network_exists "${LAB_NETWORK}" && [[ $(network_owner "${LAB_NETWORK}") == "${LAB_NETWORK}" ]]; then
    log "removing network ${LAB_NETWORK}"
    podman network rm "${LAB_NETWORK}" >/dev/null
  fi
  rm -f "${HOSTS_FILE}" "${KNOWN_HOSTS}"
  if [[ -L ${LAB_INVENTORY}/group_vars ]]; then
    rm -f "${LAB_INVENTORY}/group_vars"
  fi
  log "lab ${LAB_NETWORK} is down"
}

do_status() {
  local name state recipe ip sysd sshs names=() rows
  command -v podman >/dev/null || {
    echo "podman is not installed: lab ${LAB_NETWORK} is down"
    return 0
  }
  rows=$(lab_inventory_rows | sort -V)
  if [[ -z ${rows} ]]; then
    echo "(no nodes: lab ${LAB_NETWORK} is down)"
    return 0
  fi
  [[ -n ${PROBES:-} ]] || {
    PROBES=$(mktemp -d /tmp/tpserve-lab-probes.XXXXXX)
    # shellcheck disable=SC2064  # PROBES is fixed from here on
    trap "rm -rf '${PROBES}'" EXIT
  }
  while read -r name state recipe ip; do
    [[ ${state} == running ]] || continue
    names+=("${name}")
    { [[ -s ${KNOWN_HOSTS} ]] && ssh_ok "${ip}" && : >"${PROBES}/status-ssh-${name}"; } &
  done <<<"${rows}"
  probe_all "${names[@]}"
  printf '%-14s %-10s %-16s %-10s %-5s %s\n' NODE CONTAINER ADDRESS SYSTEMD SSH RECIPE
  while read -r name state recipe ip; do
    sysd=-
    sshs=-
    if [[ ${state} == running ]]; then
      sysd=$(probe_state "${name}")
      if [[ -e ${PROBES}/status-ssh-${name} ]]; then sshs=ok; else sshs=no; fi
    fi
    printf '%-14s %-10s %-16s %-10s %-5s %s\n' "${name}" "${state}" "${ip}" "${sysd:-?}" "${sshs}" "${recipe}"
  done <<<"${rows}"
  if [[ -s ${HOSTS_FILE} ]]; then echo "inventory: ${HOSTS_FILE}"; fi
}

main() {
  local cmd=${1:-}
  validate
  case ${cmd} in
    up) do_up ;;
    down)
      command -v podman >/dev/null || {
        log "podman is not installed: nothing to remove"
        return 0
      }
      mkdir -p "${LAB_CACHE}/locks"
      exec 9>"${LAB_CACHE}/locks/${LAB_NETWORK}.lock"
      flock -w 600 9 || die "another up/down of lab ${LAB_NETWORK} is still running"
      do_down
      ;;
    status) do_status ;;
    image)
      ensure_prereqs
      ensure_image
      ;;
    *) die "usage: $(basename "$0") up|down|status|image" ;;
  esac
}

main "$@"
