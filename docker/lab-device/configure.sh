#!/bin/bash
# Lab device rootfs: sshd with keys only, no units a container has no use for, QEMU_CPU for
# arm64. usage: configure.sh ROOT ARCH (called by docker/rootfs/debootstrap.sh)
set -euo pipefail
root=$1 arch=$2

# sshd: keys only; the host key, listen address and authorized_keys are put in per device
cat >"$root/etc/ssh/sshd_config.d/00-edgefleet.conf" <<'CFG'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
CFG
rm -f "$root"/etc/ssh/ssh_host_*
install -d -m 700 "$root/root/.ssh"
# units that have nothing to do in a container (no consoles, no udev, no timers that fetch)
for unit in getty.target console-getty.service systemd-logind.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer systemd-timesyncd.service systemd-firstboot.service \
    systemd-remount-fs.service sys-kernel-config.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount dev-hugepages.mount mender-client.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
if [ "$arch" = arm64 ]; then
    # every process runs through qemu-user: pick a CPU without SME (ORT uses SME and QEMU
    # emulates it ~25x slower); services get it from systemd, SSH sessions from pam_env
    install -d "$root/etc/systemd/system.conf.d"
    printf '[Manager]\nDefaultEnvironment=QEMU_CPU=neoverse-n1\n' \
        >"$root/etc/systemd/system.conf.d/10-edgefleet-qemu.conf"
    echo 'QEMU_CPU=neoverse-n1' >>"$root/etc/environment"
fi
# mender-client keeps its state in /data/mender (/var/lib/mender links there); its daemon is
# masked above: the lab runs the client's standalone commands only
install -d -m 700 "$root/data/mender"
echo lab-device >"$root/etc/hostname"
