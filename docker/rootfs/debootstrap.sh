#!/bin/bash
# Build a trimmed Debian bookworm rootfs from a recipe and write it as a tar (zstd).
#
# usage: debootstrap.sh RECIPE_DIR ARCH OUT.tar.zst DEB_CACHE_DIR
# RECIPE_DIR holds packages.txt (on top of debootstrap minbase, one a line) and may hold
# configure.sh, run as `bash configure.sh ROOT ARCH` before the trim. Runs as root. For a
# foreign ARCH (arm64 on x86_64) the second stage runs the device's binaries through the
# host's qemu binfmt registration (F flag), so no qemu is copied in.
# Trimmed for every recipe: no docs, man pages, info, locales, lintian, apt caches or lists.
set -euo pipefail

recipe=$(realpath "$1") arch=$2 out=$(realpath -m "$3") cache=$(realpath -m "$4")
mirror=${EDGEFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=$(grep -v '^#' "$recipe/packages.txt" | xargs | tr ' ' ',')
name=${recipe##*/}

work=$(mktemp -d "${out%/*}/rootfs-$name-$arch.XXXXXX")
root=$work/root
cleanup() {
    for m in proc sys dev/pts dev; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$cache" "$root"
echo "rootfs: debootstrap bookworm $arch for $name (minbase + ${include})"
debootstrap --arch="$arch" --variant=minbase --include="$include" \
    --cache-dir="$cache" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    tail -n 40 "$root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    exit 1
}

# later installs stay trimmed too
cat >"$root/etc/dpkg/dpkg.cfg.d/01-edgefleet-nodoc" <<'CFG'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
CFG
cat >"$root/etc/apt/apt.conf.d/01-edgefleet-nocache" <<'CFG'
APT::Install-Recommends "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
if [ -f "$recipe/configure.sh" ]; then
    echo "rootfs: configure ($name)"
    bash "$recipe/configure.sh" "$root" "$arch"
fi
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
