#!/bin/bash
# Build a trimmed Debian bookworm rootfs for a lab device and write it as a tar (zstd).
#
# usage: rootfs.sh ARCH OUT.tar.zst DEB_CACHE_DIR
# Runs as root. For a foreign ARCH (arm64 on x86_64) the second stage runs the device's
# binaries through the host's qemu binfmt registration (F flag), so no qemu is copied in.
set -euo pipefail

arch=$1 out=$(realpath -m "$2") cache=$(realpath -m "$3")
here=$(cd "$(dirname "$0")" && pwd)
mirror=${EDGEFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=$(grep -v '^#' "$here/packages.txt" | xargs | tr ' ' ',')

work=$(mktemp -d "${out%/*}/rootfs-$arch.XXXXXX")
root=$work/root
cleanup() {
    for m in proc sys dev/pts dev; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$cache" "$root"
echo "rootfs: debootstrap bookworm $arch (minbase + ${include})"
debootstrap --arch="$arch" --variant=minbase --include="$include" \
    --cache-dir="$cache" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    tail -n 40 "$root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    exit 1
}

echo "rootfs: configure for a container device"
# later installs stay trimmed too
cat >"$root/etc/dpkg/dpkg.cfg.d/01-edgefleet-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
cat >"$root/etc/apt/apt.conf.d/01-edgefleet-nocache" <<'EOF'
APT::Install-Recommends "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
# sshd: keys only; the host key, listen address and authorized_keys are put in per device
cat >"$root/etc/ssh/sshd_config.d/00-edgefleet.conf" <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
EOF
rm -f "$root"/etc/ssh/ssh_host_*
install -d -m 700 "$root/root/.ssh"
# units that have nothing to do in a container (no consoles, no udev, no timers that fetch)
for unit in getty.target console-getty.service systemd-logind.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer systemd-timesyncd.service systemd-firstboot.service \
    systemd-remount-fs.service sys-kernel-config.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount dev-hugepages.mount; do
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
echo lab-device >"$root/etc/hostname"
: >"$root/etc/machine-id"

echo "rootfs: trim"
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/lintian "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/debootstrap
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find "$root/var/log" -type f -delete
find "$root/usr/lib/python3" "$root/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true

echo "rootfs: pack"
tar --numeric-owner --xattrs -C "$root" -cf - . | zstd -q -T0 -3 -o "$work/out.tar.zst"
mv "$work/out.tar.zst" "$out"
du -sh "$root" | sed 's/^/rootfs: unpacked /'
