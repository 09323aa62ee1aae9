#!/bin/bash
# Runtime base rootfs: a Python 3.11 and little else. Drops what a service that loads an
# ONNX model never uses: apt and perl (the image is rebuilt, never upgraded in place),
# tzdata, glibc's iconv modules, Python's tests, IDLE, tkinter, lib2to3, ensurepip and pydoc
# data. The runtime's selftest in the finished image (`invoke image.test`) proves the rest.
# usage: configure.sh ROOT ARCH (called by docker/rootfs/debootstrap.sh)
set -euo pipefail
root=$1

chroot "$root" dpkg --purge apt libapt-pkg6.0 tzdata >/dev/null
chroot "$root" dpkg --purge --force-remove-essential --force-depends perl-base >/dev/null 2>&1
rm -rf "$root"/usr/lib/*-linux-gnu/gconv
rm -rf "$root"/usr/lib/python3.11/{test,idlelib,tkinter,lib2to3,ensurepip,pydoc_data,turtledemo} \
    "$root"/var/lib/apt "$root"/var/cache/apt "$root"/etc/apt
# the runtime runs as this user (the Dockerfile says USER 10001)
echo 'edge:x:10001:10001:edgefleet runtime:/nonexistent:/usr/sbin/nologin' >>"$root/etc/passwd"
echo 'edge:x:10001:' >>"$root/etc/group"
echo runtime >"$root/etc/hostname"
