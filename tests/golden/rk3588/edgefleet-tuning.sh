#!/bin/sh
# edgefleet tuning for rk3588-golden (board rk3588), rendered by edgefleet; do not edit.
# usage: edgefleet-tuning.sh apply|revert|check
#   apply   set the governor on every cpufreq policy; remembers what it changed
#   revert  put back what apply changed
#   check   print the current state; exit 1 when it differs from what apply sets
# Idempotent: a value already right is left alone.
set -eu

SYSFS=${EDGEFLEET_SYSFS:-/sys}
STATE=${STATE_DIRECTORY:-/var/lib/edgefleet-tuning}
GOVERNOR=performance
NVPMODEL=''
JETSON_CLOCKS=no

log() { printf 'edgefleet-tuning: %s\n' "$*"; }

governors() {
    mode=$1
    drift=0
    for policy in "$SYSFS"/devices/system/cpu/cpufreq/policy*; do
        [ -r "$policy/scaling_governor" ] || continue
        name=${policy##*/}
        current=$(cat "$policy/scaling_governor")
        saved="$STATE/$name.governor"
        case $mode in
            apply) want=$GOVERNOR ;;
            revert) [ -f "$saved" ] || continue; want=$(cat "$saved") ;;
            check)
                log "$name governor=$current want=$GOVERNOR"
                [ "$current" = "$GOVERNOR" ] || drift=1
                continue ;;
        esac
        if [ "$current" = "$want" ]; then
            log "$name: governor already $want"
        elif [ ! -w "$policy/scaling_governor" ]; then
            log "$name: scaling_governor not writable; left at $current"
        else
            if [ "$mode" = apply ] && [ ! -f "$saved" ]; then
                printf '%s\n' "$current" > "$saved"
            fi
            printf '%s\n' "$want" > "$policy/scaling_governor"
            log "$name: governor $current -> $want"
        fi
        if [ "$mode" = revert ]; then
            rm -f "$saved"
        fi
    done
    return $drift
}

power_mode() {
    mode=$1
    [ -n "$NVPMODEL" ] || return 0
    if ! command -v nvpmodel >/dev/null 2>&1; then
        log "nvpmodel not found; power mode left alone"
        return 0
    fi
    current=$(nvpmodel -q 2>/dev/null | tail -n 1 | tr -dc '0-9')
    saved="$STATE/nvpmodel"
    case $mode in
        apply) want=$NVPMODEL ;;
        revert) [ -f "$saved" ] || return 0; want=$(cat "$saved") ;;
        check)
            log "nvpmodel=$current want=$NVPMODEL"
            [ "$current" = "$NVPMODEL" ]
            return ;;
    esac
    if [ "$current" = "$want" ]; then
        log "nvpmodel already $want"
    else
        if [ "$mode" = apply ] && [ ! -f "$saved" ]; then
            printf '%s\n' "$current" > "$saved"
        fi
        nvpmodel -m "$want" < /dev/null
        log "nvpmodel $current -> $want"
    fi
    if [ "$mode" = revert ]; then
        rm -f "$saved"
    fi
}

clocks() {
    mode=$1
    [ "$JETSON_CLOCKS" = yes ] || return 0
    if ! command -v jetson_clocks >/dev/null 2>&1; then
        log "jetson_clocks not found; clocks left alone"
        return 0
    fi
    saved="$STATE/jetson_clocks.conf"
    case $mode in
        apply)
            [ -f "$saved" ] || jetson_clocks --store "$saved"
            jetson_clocks
            log "jetson_clocks on" ;;
        revert)
            [ -f "$saved" ] || return 0
            jetson_clocks --restore "$saved"
            rm -f "$saved"
            log "jetson_clocks restored" ;;
        check) [ -f "$saved" ] ;;
    esac
}

main() {
    mode=${1:-apply}
    case $mode in
        apply|revert) mkdir -p "$STATE" ;;
        check) ;;
        *) printf 'usage: %s apply|revert|check\n' "$0" >&2; exit 2 ;;
    esac
    status=0
    if [ "$mode" = revert ]; then
        clocks revert
        power_mode revert
        governors revert
        return 0
    fi
    power_mode "$mode" || status=1
    clocks "$mode" || status=1
    governors "$mode" || status=1
    return $status
}

main "$@"
