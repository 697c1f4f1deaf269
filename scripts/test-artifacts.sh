#!/usr/bin/env bash
# Builds what the packaging tests (tests/host/packaging.rs) install, when it is missing or
# older than the release binary:
#   - the release binary and target/debian/deploytrack_<version>-1_<arch>.deb
#     (packaging/build-deb.sh, which installs cargo-deb when it is missing);
#   - the images deploytrack:<version> and deploytrack:latest on the classic engine
#     (packaging/build-image.sh).
# With --arm, also what the ARM tests (tests/host/arm.rs) use, each built once per change of
# what goes into it:
#   - scripts/test-arm-env.sh (the cross toolchains, qemu and binfmt, the arm64 Debian image);
#   - the arm64 and armhf binaries and .debs (packaging/build-cross.sh), rebuilt only when
#     the hash of the sources, the packaged files, the script and the compiler changes
#     (target/<triple>/cross.stamp);
#   - the multi-platform image localhost:5000/deploytrack:<version> (linux/amd64,
#     linux/arm64, linux/arm/v7; packaging/build-image.sh --platforms on the containerd
#     engine), rebuilt when a binary or the script changes or the registry lost it.
# .ci/run runs it before `cargo test`; the tests run it again (then a fast no-op), so that
# `cargo test` alone works too. Prints `version=`, `deb=` and `image=` lines on
# stdout, and with --arm also `arm64_bin=`, `arm64_deb=`, `armhf_bin=`, `armhf_deb=`,
# `glibc=` (the newest glibc the ARM binaries need) and `multi_image=`; progress and the
# build logs' tails on failure go to stderr.
set -euo pipefail

# --build-only: the cargo builds and the packages, nothing that needs an engine (no image,
# no arm64 Debian image), so that they can run while scripts/test-env.sh starts the engines.
arm=0 build_only=0
for arg in "$@"; do
    case "$arg" in
    --arm) arm=1 ;;
    --build-only) build_only=1 ;;
    *)
        echo "usage: $0 [--arm] [--build-only]" >&2
        exit 2
        ;;
    esac
done

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

die() {
    echo "test-artifacts: $*" >&2
    exit 1
}

# Run from a test, the environment holds the test's CARGO_PKG_NAME, CARGO_MANIFEST_DIR and
# the like, which some build scripts (ring's) watch: with them the release build would start
# over every time it alternates with a build from a shell.
while read -r var; do
    case "$var" in
    CARGO_HOME | CARGO_TARGET_DIR) ;;
    CARGO | CARGO_* | OUT_DIR) unset "$var" ;;
    esac
done < <(compgen -e)

# One build at a time: several test binaries may ask at once.
exec 9>>/tmp/deploytrack-test-artifacts.lock
flock -w 1800 9 || die "could not take /tmp/deploytrack-test-artifacts.lock within 30 minutes"

target="${CARGO_TARGET_DIR:-target}"
log="$target/test-artifacts.log"
mkdir -p "$target"
if ! packaging/build-deb.sh >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "packaging/build-deb.sh failed (log: $log)"
fi
deb="$(sed -n 's/^build-deb: OK //p' "$log" | tail -n 1)"
[ -f "$deb" ] || die "packaging/build-deb.sh named no package (log: $log)"

bin="$target/release/deploytrack"
version="$("$bin" --version | awk '{print $2}')"
printf 'version=%s\ndeb=%s\n' "$version" "$(readlink -f "$deb")"
export DOCKER_HOST=unix:///var/run/docker.sock
image="deploytrack:$version"
if [ "$build_only" = 0 ]; then
    stamp="$target/image.stamp"
    want="$(sha256sum "$bin" | cut -d' ' -f1) $(sha256sum packaging/build-image.sh | cut -d' ' -f1)"
    have_id="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null)" || have_id=""
    if [ -z "$have_id" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want $have_id" ]; then
        if ! packaging/build-image.sh >>"$log" 2>&1; then
            tail -n 40 "$log" >&2
            die "packaging/build-image.sh failed (log: $log)"
        fi
        echo "$want $(docker image inspect --format '{{.Id}}' "$image")" >"$stamp"
    fi
    printf 'image=%s\n' "$image"
fi
[ "$arm" = 1 ] || exit 0

# ---------------------------------------------------------------- ARM
env_args=()
[ "$build_only" = 0 ] || env_args=(--packages)
if ! scripts/test-arm-env.sh "${env_args[@]}" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "scripts/test-arm-env.sh ${env_args[*]} failed (log: $log)"
fi

# source_hash: what a cross build is made of. The files cargo and cargo-deb read (sources,
# manifest, lock file, the packaged files), the build script, and the compilers.
source_hash() {
    local -a inputs=(src Cargo.toml Cargo.lock build.rs .cargo README.md packaging/INSTALL.md
        packaging/config.toml packaging/debian systemd packaging/build-cross.sh)
    {
        if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
            git ls-files -z -co --exclude-standard -- "${inputs[@]}"
        else
            find "${inputs[@]}" -type f -print0 2>/dev/null
        fi | sort -z | xargs -0 sha256sum
        /usr/bin/rustc --version 2>/dev/null || true
        rustc --version
    } | sha256sum | cut -d' ' -f1
}
hash="$(source_hash)"
glibc=""
for triple in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    out="$target/$triple/cross.out"
    stamp="$target/$triple/cross.stamp"
    bin="$(sed -n 's/^bin=//p' "$out" 2>/dev/null)" || bin=""
    cdeb="$(sed -n 's/^deb=//p' "$out" 2>/dev/null)" || cdeb=""
    if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ] || [ ! -x "$bin" ] || [ ! -f "$cdeb" ]; then
        mkdir -p "$target/$triple"
        rm -f "$stamp"
        echo "test-artifacts: cross-building $triple" >&2
        if ! packaging/build-cross.sh "$triple" >"$out.new" 2>>"$log"; then
            tail -n 40 "$log" >&2
            die "packaging/build-cross.sh $triple failed (log: $log)"
        fi
        mv "$out.new" "$out"
        echo "$hash" >"$stamp"
    fi
    arch="$(sed -n 's/^arch=//p' "$out")"
    printf '%s_bin=%s\n%s_deb=%s\n' "$arch" "$(sed -n 's/^bin=//p' "$out")" "$arch" "$(sed -n 's/^deb=//p' "$out")"
    glibc="$(printf '%s\n' "$glibc" "$(sed -n 's/^glibc=//p' "$out")" | sort -V | tail -n 1)"
done
printf 'glibc=%s\n' "$glibc"
[ "$build_only" = 0 ] || exit 0

# The multi-platform image, built on the containerd engine and pushed to the loopback
# registry (which that engine reaches in its own network namespace).
multi="localhost:5000/deploytrack"
stamp="$target/multi-image.stamp"
want="$(sha256sum "$target/release/deploytrack" "$target"/{aarch64-unknown-linux-gnu,armv7-unknown-linux-gnueabihf}/release/deploytrack \
    packaging/build-image.sh | cut -d' ' -f1 | paste -sd' ')"
index_digest() {
    DOCKER_HOST=unix:///var/run/deploytrack-docker28.sock docker buildx imagetools inspect "$multi:$version" 2>/dev/null |
        sed -n 's/^Digest: *//p'
}
have="$(index_digest)" || have=""
if [ -z "$have" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want $have" ]; then
    echo "test-artifacts: building $multi:$version" >&2
    if ! DOCKER_HOST=unix:///var/run/deploytrack-docker28.sock packaging/build-image.sh \
        --platforms linux/amd64,linux/arm64,linux/arm/v7 --push "$multi" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "packaging/build-image.sh --platforms failed (log: $log)"
    fi
    echo "$want $(index_digest)" >"$stamp"
fi
printf 'multi_image=%s\n' "$multi:$version"
