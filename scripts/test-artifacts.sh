#!/usr/bin/env bash
# Builds what the packaging tests (tests/host/packaging.rs) install, when it is missing or
# older than the release binary:
#   - the release binary and target/debian/deploytrack_<version>-1_<arch>.deb
#     (packaging/build-deb.sh, which installs cargo-deb when it is missing);
#   - the images deploytrack:<version> and deploytrack:latest on the classic engine
#     (packaging/build-image.sh).
# .ci/run runs it before `cargo test`; the tests run it again (then a fast no-op), so that
# `cargo test` alone works too. Prints `version=`, `deb=` and `image=` lines on
# stdout; progress and the build logs' tails on failure go to stderr.
set -euo pipefail

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
export DOCKER_HOST=unix:///var/run/docker.sock
image="deploytrack:$version"
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
printf 'version=%s\ndeb=%s\nimage=%s\n' "$version" "$(readlink -f "$deb")" "$image"
