#!/usr/bin/env bash
# The image in which the packaging tests boot systemd and install the .deb:
# deploytrack-test/systemd:bookworm on the classic engine (/var/run/docker.sock), a Debian 12
# root file system made by mmdebstrap from Debian's packages (systemd 252, dbus, adduser,
# ca-certificates). Built only when missing or made from another package list; called by
# scripts/test-env.sh. Needs root (mmdebstrap), and installs mmdebstrap when missing.
set -euo pipefail

readonly IMAGE=deploytrack-test/systemd:bookworm
readonly PACKAGES=systemd,systemd-sysv,dbus,adduser,ca-certificates
readonly DOCKER=(docker -H unix:///var/run/docker.sock)

log() { printf 'test-systemd-image: %s\n' "$*" >&2; }
die() {
    printf 'test-systemd-image: ERROR: %s\n' "$*" >&2
    exit 1
}

have="$("${DOCKER[@]}" image inspect --format '{{index .Config.Labels "deploytrack.test.packages"}}' "$IMAGE" 2>/dev/null)" || have=""
[ "$have" != "$PACKAGES" ] || exit 0

[ "$(id -u)" -eq 0 ] || die "building $IMAGE needs root (mmdebstrap)"
if ! command -v mmdebstrap >/dev/null; then
    log "installing mmdebstrap (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap >/dev/null; } ||
        die "apt-get install mmdebstrap failed"
fi
# The machine's own Debian mirror, as apt has it.
mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)" || true
mirror="${mirror%% *}"
[ -n "$mirror" ] || mirror="$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)" || true
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

work="$(mktemp -d /var/tmp/deploytrack-systemd.XXXXXX)"
trap 'rm -rf "$work"' EXIT
log "building $IMAGE with mmdebstrap ($mirror, log: $work/mmdebstrap.log while it runs)"
if ! mmdebstrap --variant=minbase --include="$PACKAGES" bookworm "$work/rootfs.tar" "$mirror" \
    >"$work/mmdebstrap.log" 2>&1; then
    tail -n 30 "$work/mmdebstrap.log" >&2
    die "mmdebstrap failed"
fi
"${DOCKER[@]}" import -c 'CMD ["/lib/systemd/systemd"]' \
    -c "LABEL deploytrack.test.packages=$PACKAGES" "$work/rootfs.tar" "$IMAGE" >/dev/null
log "built $IMAGE"
