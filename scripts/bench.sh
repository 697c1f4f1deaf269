#!/usr/bin/env bash
# Run deploytrack's benchmark suite and write BENCHMARKS.md.
#
#   scripts/bench.sh            full suite (about 4 minutes), writes BENCHMARKS.md
#   scripts/bench.sh --quick    smaller N for a fast check (about 2 minutes), writes
#                               target/bench/BENCHMARKS.partial.md
#   scripts/bench.sh --only B1,B3 [--quick] [--out FILE] [--keep]
#
# Steps: scripts/test-env.sh (Docker Engine, registry, test images), the release build,
# then benches/suite/ (cargo bench, harness = false) against a copy of the release build
# (target/bench/deploytrack: cargo bench rebuilds target/release/deploytrack differently).
# Raw figures go to target/bench/results.json (results.partial.json). Containers the suite starts carry the label
# deploytrack.bench.run=<run id> and are removed at the end, also on failure or Ctrl-C.
# Measurements, not tests: nothing fails on timing; the exit status is non-zero only when
# a benchmark could not run.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

for arg in "$@"; do
    case $arg in
        -h|--help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
    esac
done

log() { printf 'bench.sh: %s\n' "$*" >&2; }

BENCH_RUN_ID="$(date +%s)-$$"
export BENCH_RUN_ID

cleanup() {
    local ids
    ids=$(docker ps -aq --filter "label=deploytrack.bench.run=$BENCH_RUN_ID" 2>/dev/null || true)
    if [ -n "$ids" ]; then
        log "removing the containers left by this run"
        # shellcheck disable=SC2086 # one id per word
        docker rm -f $ids >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "preparing the Docker test environment (scripts/test-env.sh)"
scripts/test-env.sh

log "building the release binary"
cargo build --release --locked
# `cargo bench` builds target/release/deploytrack once more, with the dev-dependencies'
# features unified in (about 8% larger than the binary shipped): measure a copy of the
# release build instead.
mkdir -p target/bench
cp target/release/deploytrack target/bench/deploytrack

export DEPLOYTRACK_BIN="$PWD/target/bench/deploytrack"
log "running the suite (run id $BENCH_RUN_ID)"
cargo bench --locked --bench suite -- "$@"
