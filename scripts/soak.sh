#!/usr/bin/env bash
# Run deploytrack's soak test and write its figures to SOAK.md.
#
#   scripts/soak.sh                    30 minutes (the default)
#   scripts/soak.sh --duration 3m      shorter (any humantime duration: 90s, 10m, 1h)
#   scripts/soak.sh --report FILE      write the figures to FILE instead of SOAK.md
#
# Steps: scripts/test-env.sh (Docker Engine, registry, test images), then the ignored test
# tests/it/soak/ in the release profile. It runs a Docker Engine of its own in a private
# network namespace (restarted twice during the run; the shared engine is never touched),
# and removes everything it made at the end, also when it fails. If the run is
# interrupted before the test cleans up, this script does (see cleanup below).
# The exit status is the test's: non-zero when a check failed.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

log() { printf 'soak.sh: %s\n' "$*" >&2; }

DURATION=30m
REPORT=""
while [ $# -gt 0 ]; do
    case $1 in
        --duration) DURATION=${2:?--duration needs a value, like 30m}; shift 2 ;;
        --duration=*) DURATION=${1#*=}; shift ;;
        --report) REPORT=${2:?--report needs a file}; shift 2 ;;
        --report=*) REPORT=${1#*=}; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) log "unknown argument: $1 (see --help)"; exit 64 ;;
    esac
done

# The test writes what it runs to this file and removes it once it has cleaned up.
MARKER=$(mktemp /tmp/deploytrack-soak-marker.XXXXXX)
export DEPLOYTRACK_SOAK_MARKER=$MARKER
export DEPLOYTRACK_SOAK_DURATION=$DURATION
[ -z "$REPORT" ] || export DEPLOYTRACK_SOAK_REPORT=$REPORT

cleanup() {
    if [ ! -s "$MARKER" ]; then
        rm -f "$MARKER"
        return 0
    fi
    log "the soak ended before its own cleanup; removing what it made"
    local root scope_dir agents pid netns ids
    root=$(sed -n 's/^engine_root=//p' "$MARKER")
    scope_dir=$(sed -n 's/^scope_dir=//p' "$MARKER")
    agents=$(sed -n 's/^agents=//p' "$MARKER")
    for pid in $agents; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    case $root in /tmp/dt-e*) ;; *) root="" ;; esac
    if [ -n "$root" ]; then
        if [ -S "$root/docker.sock" ]; then
            ids=$(timeout 30 docker -H "unix://$root/docker.sock" ps -aq 2>/dev/null || true)
            # A few at a time, each call bounded (dockerd 20.10 wedges on big parallel removals).
            # shellcheck disable=SC2086 # one id per word
            printf '%s\n' $ids | xargs -r -n 20 timeout 120 docker -H "unix://$root/docker.sock" rm -f >/dev/null 2>&1 || true
        fi
        if [ -f "$root/docker.pid" ]; then
            pid=$(cat "$root/docker.pid")
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 300); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        netns=$(basename "$root")
        for pid in $(ip netns pids "$netns" 2>/dev/null || true); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$netns" 2>/dev/null || true
        rm -rf "$root"
    fi
    case $scope_dir in /tmp/deploytrack-it-soak-*) rm -rf "$scope_dir" ;; esac
    rm -f "$MARKER"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "preparing the Docker test environment (scripts/test-env.sh)"
bash scripts/test-env.sh

log "running the soak for $DURATION (release build; figures to ${REPORT:-SOAK.md})"
# soak::soak::classic: its private engine runs Debian's dockerd 20.10, the classic store.
cargo test --release --test it soak::soak::classic -- --ignored --nocapture --test-threads 1
