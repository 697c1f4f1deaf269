#!/usr/bin/env bash
# The ARM figures of BENCHMARKS.md ("ARM, emulated"): the arm64 agent's start-to-ready time
# and idle resident memory under qemu-user on this amd64 machine, beside the native amd64
# binary measured the same way, and the size of each platform's binary, .deb and image.
#
#   scripts/bench-arm.sh [RUNS]        # RUNS defaults to 7; prints a Markdown table
#
# Start to ready: from the fork to the first 200 of the admin listener's /readyz (polled
# every 5 ms), which answers once the engine has answered and the agent has reconciled.
# The agent is a dry run on the classic engine (unix:///var/run/docker.sock) with a label
# selector that matches no container, so the figure is the agent's own start: the loader,
# the runtime, the engine connection and an empty reconciliation. Idle RSS: VmRSS of the
# process 10 s after it was ready. Under emulation the process is qemu-aarch64-static with
# the agent inside it, so its RSS includes the emulator and its translated code: an upper
# bound for the agent on a real arm64 CPU.
#
# Needs what `scripts/test-artifacts.sh --arm` builds (the binaries, the .debs and
# localhost:5000/deploytrack:<version>) and what scripts/test-arm-env.sh installs (qemu,
# binfmt, libc6:arm64 at its multiarch paths, so no QEMU_LD_PREFIX), plus curl.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

runs="${1:-7}"
target="${CARGO_TARGET_DIR:-target}"
native="$target/release/deploytrack"
arm64="$target/aarch64-unknown-linux-gnu/release/deploytrack"
armhf="$target/armv7-unknown-linux-gnueabihf/release/deploytrack"

die() {
    echo "bench-arm: $*" >&2
    exit 1
}
for f in "$native" "$arm64" "$armhf"; do
    [ -x "$f" ] || die "$f is missing: run scripts/test-artifacts.sh --arm"
done
command -v curl >/dev/null || die "curl is missing: apt-get install curl"
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
    die "no binfmt handler for arm64: run scripts/test-arm-env.sh"
export DOCKER_HOST=unix:///var/run/docker.sock
docker version >/dev/null 2>&1 || die "the classic engine does not answer: run scripts/test-env.sh"

work="$(mktemp -d /tmp/deploytrack-bench-arm.XXXXXX)"
pid=""
cleanup() {
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# measure BIN: one run; prints "<ms to ready> <idle RSS KiB> <exe>".
measure() {
    local bin="$1" port start ready rss exe
    port=$((20000 + RANDOM % 10000))
    start="$(now_ms)"
    env -i PATH=/usr/bin:/bin DOCKER_HOST="$DOCKER_HOST" "$bin" run --dry-run \
        --label-selector deploytrack.bench=none --listen "127.0.0.1:$port" \
        >"$work/out" 2>"$work/err" &
    pid=$!
    ready=""
    for _ in $(seq 1 6000); do # 30 s at most
        if curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; then
            ready=$(($(now_ms) - start))
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.005
    done
    [ -n "$ready" ] || {
        cat "$work/err" >&2
        die "$bin did not turn ready within 30 s"
    }
    sleep 10
    rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")"
    exe="$(basename "$(readlink "/proc/$pid/exe")")"
    kill -TERM "$pid"
    wait "$pid" || die "$bin did not exit 0 on SIGTERM"
    pid=""
    echo "$ready $rss $exe"
}

row() { # row LABEL BIN
    local label="$1" bin="$2" i t r exe="" line times=() rsses=()
    for i in $(seq 1 "$runs"); do
        line="$(measure "$bin")"
        read -r t r exe <<<"$line"
        times+=("$t")
        rsses+=("$r")
        echo "bench-arm: $label run $i: ready in $t ms, idle RSS $r KiB ($exe)" >&2
    done
    # median (min to max): milliseconds as they are, KiB as MiB with one decimal
    printf '| %s (%s) | %s | %s |\n' "$label" "$exe" \
        "$(printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR]=$1} END {printf "%d ms (%d to %d)", v[int((NR+1)/2)], v[1], v[NR]}')" \
        "$(printf '%s\n' "${rsses[@]}" | sort -n | awk '{v[NR]=$1/1024} END {printf "%.1f MiB (%.1f to %.1f)", v[int((NR+1)/2)], v[1], v[NR]}')"
}

echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -m) (load average $(cut -d' ' -f1-3 /proc/loadavg) at the start), $(/usr/bin/qemu-aarch64-static --version | head -n 1), medians of $runs runs (range)."
echo
echo '| agent | start to ready | idle RSS |'
echo '|---|---|---|'
row "amd64, native" "$native"
row "arm64, emulated" "$arm64"
echo
echo '| platform | binary | .deb | image (compressed layer) |'
echo '|---|---|---|---|'
version="$("$native" --version | awk '{print $2}')"
index="$(docker buildx imagetools inspect --raw "localhost:5000/deploytrack:$version")"
layer() { # layer ARCH [VARIANT]: the compressed size of that platform's one layer
    local digest
    digest="$(jq -r --arg a "$1" --arg v "${2:-}" \
        '.manifests[] | select(.platform.architecture == $a and (.platform.variant // "") == $v) | .digest' <<<"$index")"
    docker buildx imagetools inspect --raw "localhost:5000/deploytrack@$digest" | jq '[.layers[].size] | add'
}
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
for spec in "linux/amd64 $native $target/debian amd64 amd64" \
    "linux/arm64 $arm64 $target/aarch64-unknown-linux-gnu/debian arm64 arm64" \
    "linux/arm/v7 $armhf $target/armv7-unknown-linux-gnueabihf/debian armhf arm v7"; do
    read -r platform bin debs deb_arch arch variant <<<"$spec"
    deb="$debs/deploytrack_$version-1_$deb_arch.deb"
    [ -f "$deb" ] || die "$deb is missing: run scripts/test-artifacts.sh --arm"
    printf '| %s | %s MiB | %s MiB | %s MiB |\n' "$platform" "$(mib "$(stat -c %s "$bin")")" \
        "$(mib "$(stat -c %s "$deb")")" "$(mib "$(layer "$arch" "${variant:-}")")"
done
