#!/usr/bin/env bash
# Prepares this Debian 12 (amd64) machine to build deploytrack for ARM without emulation and
# to run ARM code under emulation, for packaging/build-cross.sh, packaging/build-image.sh
# --platforms and the ARM tests (tests/host/arm.rs). Idempotent, and a fast no-op when all
# is in place; serialised by flock. Progress goes to stderr; stdout stays empty.
#
#   - dpkg's foreign architectures arm64 and armhf (multiarch);
#   - per target, the compiler: rustup's when `rustup target list --installed` shows the
#     target (then nothing is installed for it), else Debian's rustc-web and cargo-web
#     (/usr/bin/rustc, /usr/bin/cargo; rustup's toolchain stays first on PATH) with
#     libstd-rust-web-dev:arm64 or :armhf, the standard library that compiler built;
#   - the cross C toolchains gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
#     gcc-arm-linux-gnueabihf, libc6-dev-armhf-cross (the bundled SQLite and ring);
#   - libc6, libgcc-s1 of arm64 and armhf, installed beside amd64's: the files and dpkg
#     status entries of the ARM images come from them, and qemu finds their loader and
#     libraries at their usual paths, so no QEMU_LD_PREFIX is needed (do not point it at
#     the cross toolchain's /usr/aarch64-linux-gnu: the agent spins in its pthread code);
#   - qemu-user-static and binfmt-support, binfmt_misc mounted and the qemu-aarch64 and
#     qemu-arm handlers enabled with the F flag, so that containers run ARM binaries too;
#   - mmdebstrap and arch-test, and the image localhost:5000/deploytrack-test/debian:bookworm-arm64
#     (Debian 12 arm64, minbase and adduser, made by mmdebstrap under emulation, imported
#     as linux/arm64 on the containerd engine, pushed to the loopback registry and pulled on
#     the classic engine), where tests/host/arm.rs installs the arm64 .deb. No systemd in
#     it: the .deb under systemd is tested natively (tests/host/packaging.rs).
#
#   scripts/test-arm-env.sh              # all of the above
#   scripts/test-arm-env.sh --packages   # the packages and binfmt only: no engine needed,
#                                        # so the cross builds can start before the engines
#
# Needs root and Debian's package mirror; for the image also the engines and the registry
# of scripts/test-env.sh (run it first).
set -euo pipefail

packages_only=0
case "${1:-}" in
"") ;;
--packages) packages_only=1 ;;
*)
    echo "usage: $0 [--packages]" >&2
    exit 2
    ;;
esac

readonly DEBIAN_IMAGE=localhost:5000/deploytrack-test/debian:bookworm-arm64
readonly DEBIAN_PACKAGES=adduser
readonly CLASSIC=unix:///var/run/docker.sock
readonly CONTAINERD=unix:///var/run/deploytrack-docker28.sock
readonly LOCK=/tmp/deploytrack-test-arm-env.lock
# Rust targets, Debian architectures, qemu handlers.
readonly TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
readonly ARCHES=(arm64 armhf)
readonly HANDLERS=(qemu-aarch64 qemu-arm)
readonly RUST_MIN=1.89

log() { printf 'test-arm-env: %s\n' "$*" >&2; }
die() {
    printf 'test-arm-env: ERROR: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root (dpkg, apt-get, binfmt_misc)"
[ "$(dpkg --print-architecture)" = amd64 ] ||
    die "written for an amd64 build machine; this one is $(dpkg --print-architecture)"

exec 9>>"$LOCK"
flock -w 1800 9 || die "could not take $LOCK within 30 minutes"

# ---------------------------------------------------------------- packages
installed() { # installed PKG...: every package is installed
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f '${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || return 1
    done
}
has_rustup_target() {
    command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$1"
}

packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
    qemu-user-static binfmt-support mmdebstrap arch-test binutils)
debian_rust=0
for i in "${!TARGETS[@]}"; do
    packages+=("libc6:${ARCHES[$i]}" "libgcc-s1:${ARCHES[$i]}")
    if ! has_rustup_target "${TARGETS[$i]}"; then
        debian_rust=1
        packages+=("libstd-rust-web-dev:${ARCHES[$i]}")
    fi
done
[ "$debian_rust" = 0 ] || packages+=(rustc-web cargo-web)

foreign="$(dpkg --print-foreign-architectures)"
missing_arch=0
for arch in "${ARCHES[@]}"; do
    grep -qx "$arch" <<<"$foreign" || missing_arch=1
done
if [ "$missing_arch" = 1 ] || ! installed "${packages[@]}"; then
    for arch in "${ARCHES[@]}"; do
        grep -qx "$arch" <<<"$foreign" || { log "adding the dpkg architecture $arch"; dpkg --add-architecture "$arch"; }
    done
    log "installing ${packages[*]} (apt-get)"
    apt_log="$(mktemp /tmp/deploytrack-apt-arm.XXXXXX)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get update >"$apt_log" 2>&1 ||
        ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" >>"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get failed (log: $apt_log)"
    fi
    rm -f "$apt_log"
    hash -r
fi
if [ "$debian_rust" = 1 ]; then
    have="$(/usr/bin/rustc --version | awk '{print $2}')"
    [ "$(printf '%s\n' "$RUST_MIN" "$have" | sort -V | head -n 1)" = "$RUST_MIN" ] ||
        die "Debian's /usr/bin/rustc is $have, older than the $RUST_MIN this project needs (rustc-web from bookworm-security)"
fi

# ---------------------------------------------------------------- binfmt
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    log "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
for handler in "${HANDLERS[@]}"; do
    entry="/proc/sys/fs/binfmt_misc/$handler"
    if [ ! -e "$entry" ] || ! grep -qx enabled "$entry"; then
        log "enabling the binfmt handler $handler"
        update-binfmts --enable "$handler" >/dev/null 2>&1 || true
    fi
    if [ ! -e "$entry" ] || ! grep -qx enabled "$entry"; then
        die "the binfmt handler $handler is not registered (update-binfmts --enable $handler)"
    fi
    grep -q '^flags: .*F' "$entry" ||
        die "the binfmt handler $handler lacks the F flag, so containers cannot use it: $(grep '^flags' "$entry")"
done

[ "$packages_only" = 0 ] || exit 0

# ---------------------------------------------------------------- the arm64 Debian image
classic() { docker -H "$CLASSIC" "$@"; }
containerd() { docker -H "$CONTAINERD" "$@"; }
classic version >/dev/null 2>&1 || die "the classic engine does not answer on $CLASSIC: run scripts/test-env.sh first"
have="$(classic image inspect --format '{{index .Config.Labels "deploytrack.test.packages"}} {{.Os}}/{{.Architecture}}' "$DEBIAN_IMAGE" 2>/dev/null)" || have=""
if [ "$have" != "$DEBIAN_PACKAGES linux/arm64" ]; then
    containerd version >/dev/null 2>&1 || die "the containerd engine does not answer on $CONTAINERD: run scripts/test-env.sh first"
    mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)" || true
    mirror="${mirror%% *}"
    [ -n "$mirror" ] || mirror="$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)" || true
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    work="$(mktemp -d /var/tmp/deploytrack-debian-arm64.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    log "building $DEBIAN_IMAGE with mmdebstrap under emulation ($mirror, log: $work/mmdebstrap.log while it runs)"
    if ! mmdebstrap --architectures=arm64 --variant=minbase --include="$DEBIAN_PACKAGES" \
        bookworm "$work/rootfs.tar" "$mirror" >"$work/mmdebstrap.log" 2>&1; then
        tail -n 30 "$work/mmdebstrap.log" >&2
        die "mmdebstrap failed"
    fi
    # Imported on the containerd engine, which keeps the platform it is given (20.10's
    # import records amd64 whatever --platform says), and handed over through the registry.
    containerd import --platform linux/arm64 -c 'CMD ["/bin/bash"]' \
        -c "LABEL deploytrack.test.packages=$DEBIAN_PACKAGES" "$work/rootfs.tar" "$DEBIAN_IMAGE" >/dev/null
    containerd push -q "$DEBIAN_IMAGE" >/dev/null
    classic pull -q --platform linux/arm64 "$DEBIAN_IMAGE" >/dev/null
    have="$(classic image inspect --format '{{index .Config.Labels "deploytrack.test.packages"}} {{.Os}}/{{.Architecture}}' "$DEBIAN_IMAGE")"
    [ "$have" = "$DEBIAN_PACKAGES linux/arm64" ] || die "$DEBIAN_IMAGE on the classic engine is '$have', not linux/arm64 with $DEBIAN_PACKAGES"
    log "built $DEBIAN_IMAGE"
fi
