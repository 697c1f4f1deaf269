#!/usr/bin/env bash
# Run every fuzz target of fuzz/ in turn for SECONDS each (default 60); exit 1 if any
# crashed. Usage: scripts/fuzz.sh [seconds-per-target]
#
# Uses the nightly toolchain when there is one (FUZZ_TOOLCHAIN picks another), else the
# stable one with RUSTC_BOOTSTRAP=1 for the sanitizer flags cargo-fuzz passes; installs
# cargo-fuzz if it is missing. New corpus entries go to
# fuzz/target/corpus/<target> (kept between runs, not committed); the seeds in
# fuzz/corpus/<target> are only read. Crashes are written to fuzz/artifacts/<target>/ and
# each run's libFuzzer output to fuzz/target/fuzz-logs/<target>.log.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds-per-target]" >&2
    exit 64
fi
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
if [ -z "${FUZZ_TOOLCHAIN:-}" ] && ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "no nightly toolchain: using stable with RUSTC_BOOTSTRAP=1" >&2
    toolchain=stable
    export RUSTC_BOOTSTRAP=1
fi

cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cargo "+$toolchain" fuzz build
mapfile -t targets < <(cargo "+$toolchain" fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "no fuzz targets found" >&2
    exit 1
fi
mkdir -p target/fuzz-logs

failed=()
summary=()
for target in "${targets[@]}"; do
    log="target/fuzz-logs/$target.log"
    mkdir -p "target/corpus/$target" "corpus/$target"
    echo "== $target: ${seconds}s" >&2
    status=0
    cargo "+$toolchain" fuzz run "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 execs in \2 s/p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' || true)
    if [ "$status" -eq 0 ]; then
        summary+=("$target: ok, ${runs:-? execs}, $last")
    else
        failed+=("$target")
        summary+=("$target: FAILED (exit $status), see $log and artifacts/$target/")
        grep -m 1 -A 4 'panicked at' "$log" >&2 || tail -n 20 "$log" >&2
    fi
done

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
