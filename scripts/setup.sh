#!/bin/bash
# Make this machine ready for edgefleet: Debian packages (qemu-system-arm for the lab VM),
# trixie's qemu-user, buildx and docker engine (dockerd 26 + containerd 1.7 with the containerd
# image store, so one tag can hold arm64 and amd64), the qemu-aarch64 binfmt handler, a running
# dockerd, and the project's .venv.
#
# Idempotent and quick when all is in place. Runs as root on Debian 12 (bookworm), with or
# without systemd, with no terminal (CI=true). Each step says what it found or did.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s%N)
say() { printf 'setup: %s [%d ms]\n' "$*" $((($(date +%s%N) - t0) / 1000000)); }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, dockerd and binfmt_misc need it)"

# -- 1. Debian bookworm packages -------------------------------------------------------------
bookworm_pkgs=(runc debootstrap openssh-client openssh-server systemd
    iproute2 zstd ca-certificates python3 python3-venv tar shellcheck rsync nftables
    qemu-system-arm qemu-utils e2fsprogs    # the lab VM: qemu-system-aarch64 7.2, qemu-img, mkfs.ext4 -d
    mender-artifact)                        # mender.artifact: writes and signs Mender artifacts (3.9)
# from trixie, and nothing else from it (checked below): multi-platform images need dockerd
# >= 26 with containerd >= 1.7 (bookworm has 20.10 and 1.6); trixie splits the CLI out
trixie_pkgs=(qemu-user docker-buildx docker.io docker-cli containerd)
trixie_list=/etc/apt/sources.list.d/edgefleet-trixie.sources
trixie_pin=/etc/apt/preferences.d/edgefleet-trixie

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
qemu_major() { qemu-aarch64 --version 2>/dev/null | sed -n '1s/.*version \([0-9]*\)\..*/\1/p'; }
dockerd_major() { dockerd --version 2>/dev/null | sed -n '1s/^Docker version \([0-9]*\)\..*/\1/p'; }
containerd_minor() { containerd --version 2>/dev/null | awk '{print $3}' | sed -n 's/^v\{0,1\}\([0-9]*\)\.\([0-9]*\)\..*/\1\2/p'; }

missing=()
for pkg in "${bookworm_pkgs[@]}"; do installed "$pkg" || missing+=("$pkg"); done
need_trixie=()
[ "$(qemu_major)" -ge 9 ] 2>/dev/null || need_trixie+=(qemu-user)
docker buildx version >/dev/null 2>&1 || installed docker-buildx || need_trixie+=(docker-buildx)
[ "$(dockerd_major)" -ge 26 ] 2>/dev/null || need_trixie+=(docker.io)
[ "$(containerd_minor)" -ge 17 ] 2>/dev/null || need_trixie+=(containerd)
command -v docker >/dev/null || installed docker-cli || need_trixie+=(docker-cli)

if [ ${#need_trixie[@]} -gt 0 ]; then
    # trixie is a source of these two packages only: pinned at 1, nothing upgrades to it
    cat >"$trixie_list" <<'EOF'
# added by edgefleet scripts/setup.sh: only qemu-user, docker-buildx, docker.io, docker-cli
# and containerd come from here
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$trixie_pin" <<'EOF'
# added by edgefleet scripts/setup.sh: never take a trixie package unless named with /trixie
Package: *
Pin: release n=trixie
Pin-Priority: 1
EOF
fi

if [ ${#missing[@]} -gt 0 ] || [ ${#need_trixie[@]} -gt 0 ]; then
    say "apt-get update (missing: ${missing[*]} ${need_trixie[*]})"
    apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    say "installed from bookworm: ${missing[*]}"
else
    say "bookworm packages present"
fi

if [ ${#need_trixie[@]} -gt 0 ]; then
    # docker.io and containerd come as a pair (26 with 1.7), and 26 needs its CLI package
    case " ${need_trixie[*]} " in *" docker.io "*|*" containerd "*)
        for pkg in docker.io containerd docker-cli; do
            case " ${need_trixie[*]} " in *" $pkg "*) ;; *) need_trixie+=("$pkg") ;; esac
        done ;;
    esac
    want=("${need_trixie[@]/%//trixie}")
    # refuse anything from trixie beyond the named packages (no trixie libc6) and any removal;
    # dependencies bookworm has (iptables, tini, ...) come from bookworm as usual
    plan=$(apt-get install -s --no-install-recommends "${want[@]}")
    extra=()
    while read -r op pkg ver; do
        if [ "$op" = Remv ]; then extra+=("-$pkg"); continue; fi
        printf '%s\n' "${trixie_pkgs[@]}" | grep -qxF "$pkg" && continue
        apt-cache madison "$pkg" | awk -F' [|] ' -v v="$ver" '$2 == v' | grep -q ' trixie/' &&
            extra+=("$pkg/trixie")
    done < <(echo "$plan" | sed -n 's/^\(Inst\|Remv\) \([^ ]*\) \(\[[^]]*\] \)\{0,1\}(\{0,1\}\([^ )]*\).*/\1 \2 \4/p')
    [ ${#extra[@]} -eq 0 ] || die "installing ${want[*]} would also change: ${extra[*]}; not doing that"
    # no init script may stop or start a daemon behind our back (restarts are decided below)
    rc_policy=/usr/sbin/policy-rc.d own_policy=
    if [ ! -e "$rc_policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$rc_policy" && chmod 755 "$rc_policy" && own_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null || {
        [ -z "$own_policy" ] || rm -f "$rc_policy"; die "apt-get install ${want[*]} failed"; }
    [ -z "$own_policy" ] || rm -f "$rc_policy"
    say "installed from trixie: ${need_trixie[*]}"
fi
[ "$(dockerd_major)" -ge 26 ] || die "dockerd is $(dockerd_major), need >= 26 (trixie's docker.io)"
[ "$(qemu_major)" -ge 9 ] || die "qemu-aarch64 is $(qemu_major), need >= 9 (trixie's qemu-user)"
ldd "$(command -v qemu-aarch64)" 2>&1 | grep -q 'statically linked' ||
    die "qemu-aarch64 is not statically linked; the binfmt F flag needs a static binary"
say "$(qemu-aarch64 --version | head -1)"

# -- 2. binfmt_misc: qemu-aarch64 with F (fix binary: works inside chroots and containers) ----
binfmt=/proc/sys/fs/binfmt_misc
mountpoint -q "$binfmt" || mount -t binfmt_misc binfmt_misc "$binfmt"
qemu_bin=$(readlink -f "$(command -v qemu-aarch64)")
entry=$binfmt/qemu-aarch64
if [ -e "$entry" ] && { ! grep -qx "interpreter $qemu_bin" "$entry" ||
    ! grep -q '^flags: .*F' "$entry" || ! grep -qx enabled "$entry"; }; then
    echo -1 >"$entry"   # someone else's registration (older qemu or no F flag): replace it
fi
if [ ! -e "$entry" ]; then
    magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    echo ":qemu-aarch64:M::${magic}:${mask}:${qemu_bin}:FPC" >"$binfmt/register"
    say "binfmt qemu-aarch64 registered ($(sed -n 's/^flags: //p' "$entry"))"
else
    say "binfmt qemu-aarch64 registered already ($(sed -n 's/^flags: //p' "$entry"))"
fi

# -- 2b. inotify instances: systemd in each lab container takes several; 128 (the default) stops
#        a lab at ~30 devices with "Failed to create inotify object: Too many open files" -------
if [ "$(sysctl -n fs.inotify.max_user_instances)" -lt 1024 ]; then
    sysctl -qw fs.inotify.max_user_instances=1024
    say "fs.inotify.max_user_instances raised to 1024 (lab devices run systemd)"
fi

# -- 3. dockerd: >= 26 with the containerd image store ------------------------------------------
daemon_json=/etc/docker/daemon.json
mkdir -p /etc/docker
# merge, keeping whatever else is configured there
python3 - "$daemon_json" <<'PY'
import json, os, sys
path = sys.argv[1]
config = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
if config.get("features", {}).get("containerd-snapshotter") is not True:
    config.setdefault("features", {})["containerd-snapshotter"] = True
    with open(path + ".tmp", "w") as out:
        json.dump(config, out, indent=2)
        out.write("\n")
    os.replace(path + ".tmp", path)
    print(f"setup: {path}: containerd image store enabled")
PY
log=/var/log/edgefleet-dockerd.log
pidfile=/run/edgefleet-dockerd.pid
engine_ok() {  # the running daemon is >= 26 and keeps images in containerd
    [ "$(docker version -f '{{.Server.Version}}' 2>/dev/null | cut -d. -f1)" -ge 26 ] 2>/dev/null &&
        docker info -f '{{json .DriverStatus}}' 2>/dev/null | grep -q io.containerd.snapshotter.v1
}
start_dockerd() {
    say "starting dockerd (log $log)"
    setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false --pidfile "$pidfile" \
        </dev/null >>"$log" 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 $! 2>/dev/null || { tail -n 20 "$log" >&2; die "dockerd exited"; }
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { tail -n 20 "$log" >&2; die "dockerd did not answer in 30 s"; }
    say "dockerd started (pid $(cat "$pidfile"))"
}
if ! docker info >/dev/null 2>&1; then
    start_dockerd
elif ! engine_ok; then
    # an older dockerd (or one without the containerd store) is running: restart it, but only
    # the one this script started, and never under someone's running containers
    running=$(docker ps -q | wc -l)
    old=$(docker version -f '{{.Server.Version}}')
    if [ ! -s "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        die "dockerd $old is running but was not started by this script (no $pidfile); restart it yourself with $daemon_json in place"
    fi
    [ "$running" = 0 ] || [ "${EDGEFLEET_RESTART_DOCKERD:-}" = 1 ] ||
        die "dockerd $old must be restarted for the containerd image store, but $running container(s) are running; stop them or set EDGEFLEET_RESTART_DOCKERD=1"
    pid=$(cat "$pidfile")
    say "restarting dockerd $old (pid $pid) for dockerd $(dockerd_major) with the containerd image store"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && die "dockerd (pid $pid) did not stop in 30 s"
    start_dockerd
else
    say "dockerd answers"
fi
engine_ok || die "dockerd $(docker version -f '{{.Server.Version}}') does not use the containerd image store (see $daemon_json)"
for cli in docker /usr/bin/docker; do
    command -v "$cli" >/dev/null || continue
    "$cli" buildx version >/dev/null 2>&1 || die "$cli buildx does not work"
done
say "docker $(docker version -f '{{.Client.Version}}/{{.Server.Version}}'), buildx $(docker buildx version | awk '{print $2}')"

# -- 4. the project's venv -------------------------------------------------------------------
venv=$repo/.venv
stamp=$venv/.edgefleet-pyproject.sha256
want_sum=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    say "created $venv ($("$venv/bin/python" --version))"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want_sum" ]; then
    say "pip install -e '.[test]' (pyproject.toml changed or first install)"
    (cd "$repo" && "$venv/bin/pip" install -q -e '.[test]')
    echo "$want_sum" >"$stamp"
    say "venv installed"
else
    say "venv up to date"
fi
say "done"
