#!/usr/bin/env bash
# Build the root filesystem of a lab node (Debian 12 or 13, systemd as PID 1, sshd) into DIR.
# Usage: node-image.sh DIR MIRROR SECURITY_MIRROR [SUITE]   (SUITE: bookworm (default) | trixie)
# The sha256 of this file and the suite is the image's recipe label: change either and lab.sh
# rebuilds the image.
# Facts behind each step: /work/shared/notes/lab.md (verified on this kind of host).
set -euo pipefail

root=${1:?usage: node-image.sh DIR MIRROR SECURITY_MIRROR}
mirror=${2:?mirror URL missing}
security_mirror=${3:?security mirror URL missing}
suite=${4:-bookworm}
case ${suite} in
  bookworm | trixie) ;;
  *)
    echo "node-image: unknown suite '${suite}' (bookworm | trixie)" >&2
    exit 2
    ;;
esac

packages=systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,python3-venv,rsync,sudo
packages+=,iproute2,ca-certificates,procps,curl,iputils-ping,less

echo "node-image: debootstrap ${suite} from ${mirror} (about a minute)"
debootstrap --variant=minbase --include="${packages}" "${suite}" "${root}" "${mirror}" >"${root}.debootstrap.log" 2>&1 || {
  tail -n 30 "${root}.debootstrap.log" >&2
  exit 1
}
rm -f "${root}.debootstrap.log"

# Every node generates its own host keys at boot (sshd -t needs them, so reset the list).
rm -f "${root}"/etc/ssh/ssh_host_*
mkdir -p "${root}/etc/systemd/system/ssh.service.d"
cat >"${root}/etc/systemd/system/ssh.service.d/10-lab-hostkeys.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT

# podman bind-mounts /etc/hostname, which makes `hostnamectl set-hostname` fail with EBUSY.
# Early at boot, turn it into a plain file holding the same name (needs CAP_SYS_ADMIN).
cat >"${root}/etc/systemd/system/lab-hostname.service" <<'UNIT'
[Unit]
Description=Lab: make /etc/hostname a plain file so hostnamectl can replace it
DefaultDependencies=no
Before=sysinit.target systemd-hostnamed.service
ConditionPathIsMountPoint=/etc/hostname

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'cp /etc/hostname /run/lab-hostname && umount /etc/hostname && cat /run/lab-hostname >/etc/hostname'

[Install]
WantedBy=sysinit.target
UNIT
mkdir -p "${root}/etc/systemd/system/sysinit.target.wants"
ln -sf /etc/systemd/system/lab-hostname.service "${root}/etc/systemd/system/sysinit.target.wants/lab-hostname.service"

# Units that make no sense (or fail) in a container.
for unit in getty.target console-getty.service systemd-remount-fs.service \
  sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
  systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer; do
  ln -sf /dev/null "${root}/etc/systemd/system/${unit}"
done

# Identity is per node: machine-id is generated at boot, /etc/hostname comes from podman.
: >"${root}/etc/machine-id"
rm -f "${root}/var/lib/dbus/machine-id" "${root}/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"${root}/etc/hosts"
install -d -m 0700 "${root}/root/.ssh"

# Full apt sources; empty lists with an epoch mtime so `apt: cache_valid_time` refreshes them.
rm -f "${root}/etc/apt/sources.list"
cat >"${root}/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: ${mirror}
Suites: ${suite} ${suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${security_mirror}
Suites: ${suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
chroot "${root}" apt-get clean
rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin
touch -d @0 "${root}/var/lib/apt/lists"
echo "node-image: root filesystem ready in ${root}"
