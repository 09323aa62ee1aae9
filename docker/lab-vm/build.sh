#!/bin/bash
# Build the lab VM's boot files from Debian packages only: a debootstrap arm64 rootfs with a
# Debian kernel, its own small initrd, and a raw ext4 disk made with `mkfs.ext4 -d` (no loop
# mounts, so no privileges beyond writing files as root).
#
# usage: build.sh KERNEL_PACKAGE[/SUITE] PROVISION_DIR OUT_DIR DEB_CACHE_DIR
#   SUITE: take the kernel from there (bookworm-backports for the 16K-page flavour, which
#   bookworm itself lacks), installed with apt in the rootfs after debootstrap.
#   PROVISION_DIR holds files edgefleet.lab.vmplan wrote: `files/` (copied over the rootfs as
#   is: host key, sshd drop-in, sudoers, authorized_keys, network), `deploy-user` (its name)
#   and `root-dir` (the device root, owned by the deploy user).
# Writes OUT_DIR/{vmlinuz,initrd.img,disk.raw,kernel-release}. Runs as root; the second
# debootstrap stage runs arm64 binaries through the host's qemu binfmt handler (F flag).
set -euo pipefail

kernel_pkg=${1%%/*} kernel_suite=$([[ $1 == */* ]] && echo "${1#*/}" || true)
provision=$(realpath "$2") out=$(realpath -m "$3") cache=$(realpath -m "$4")
here=$(cd "$(dirname "$0")" && pwd)
mirror=${EDGEFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
disk_size=${EDGEFLEET_VM_DISK_SIZE:-4G}
include=$( (grep -v '^#' "$here/packages.txt"; [ -n "$kernel_suite" ] || echo "$kernel_pkg") | xargs | tr ' ' ',')
user=$(cat "$provision/deploy-user") device_root=$(cat "$provision/root-dir")

mkdir -p "$cache" "${out%/*}"
work=$(mktemp -d "${out%/*}/vm-build.XXXXXX")
root=$work/root
cleanup() {
    for m in proc sys dev/pts dev; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
t0=$(date +%s)
say() { echo "vm image: $* [$(($(date +%s) - t0)) s]"; }

# initramfs-tools reads these when the kernel's postinst makes the initrd: only the modules
# the virt machine needs to mount its root (the defaults take 20x longer and 6x the space)
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/usr/share/initramfs-tools/modules.d"
printf 'MODULES=list\nCOMPRESS=gzip\n' >"$root/etc/initramfs-tools/conf.d/10-edgefleet-vm.conf"
printf '%s\n' virtio_pci virtio_mmio virtio_blk virtio_net crc32c_generic ext4 \
    >"$root/usr/share/initramfs-tools/modules.d/edgefleet-vm"

say "debootstrap bookworm arm64 (minbase + $include)"
debootstrap --arch=arm64 --variant=minbase --include="$include" \
    --cache-dir="$cache" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    tail -n 40 "$root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    exit 1
}
if [ -n "$kernel_suite" ]; then
    say "kernel $kernel_pkg from $kernel_suite"
    echo "deb $mirror $kernel_suite main" >"$root/etc/apt/sources.list.d/edgefleet-kernel.list"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount -t proc proc "$root/proc"
    chroot "$root" apt-get -qq update
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -qq -y --no-install-recommends \
        -t "$kernel_suite" install "$kernel_pkg" >"$work/kernel.log" 2>&1 ||
        { tail -n 40 "$work/kernel.log" >&2; exit 1; }
    umount "$root/proc"
    rm -f "$root/etc/apt/sources.list.d/edgefleet-kernel.list" "$root/etc/resolv.conf"
fi
ls "$root"/boot/vmlinuz-* "$root"/boot/initrd.img-* >/dev/null ||
    { echo "vm image: the kernel package made no vmlinuz/initrd in /boot" >&2; exit 1; }

say "provision: deploy user $user, device root $device_root, sshd, network"
chroot "$root" useradd --create-home --shell /bin/bash --groups systemd-journal "$user"
install -d -o root -g root -m 0755 "$(dirname "$root$device_root")"
chroot "$root" install -d -o "$user" -g "$user" -m 0755 "$device_root"
rm -f "$root"/etc/ssh/ssh_host_*
cp -a "$provision/files/." "$root/"
chroot "$root" chown -R "$user:$user" "/home/$user/.ssh"
chroot "$root" visudo -cq -f /etc/sudoers.d/edgefleet-deploy
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$root/etc/fstab"
echo lab-vm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 lab-vm\n' >"$root/etc/hosts"
: >"$root/etc/machine-id"
chroot "$root" systemctl enable --quiet systemd-networkd.service
# nothing to fetch or scrub on a lab VM; getty on the serial console stays for debugging
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer man-db.timer dpkg-db-backup.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

say "trim"
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/debootstrap
find "$root/var/log" -type f -delete

say "disk: mkfs.ext4 -d ($disk_size, sparse)"
kernel=$(basename "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)")
release=${kernel#vmlinuz-}
mkdir -p "$work/out"
cp "$root/boot/$kernel" "$work/out/vmlinuz"
cp "$root/boot/initrd.img-$release" "$work/out/initrd.img"
echo "$release" >"$work/out/kernel-release"
truncate -s "$disk_size" "$work/out/disk.raw"
mkfs.ext4 -q -F -L lab-vm -d "$root" "$work/out/disk.raw"
rm -rf "$out"
mv "$work/out" "$out"
say "done: kernel $release, initrd $(du -h "$out/initrd.img" | cut -f1), disk $(du -h "$out/disk.raw" | cut -f1) used"
