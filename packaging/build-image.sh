#!/usr/bin/env bash
# Builds the container image deploytrack:<version> and deploytrack:latest without any
# registry: the release binary plus the files of this machine's Debian packages that it
# needs (the C library and libgcc_s it links, found with ldd and dpkg, and the CA
# certificates), assembled as a root file system and `docker import`ed. Works with any
# engine (the legacy builder of Docker 20.10 included: nothing is built, nothing pulled),
# and on any architecture Debian has: the image is for the machine's own.
#
#   packaging/build-image.sh [NAME]      # NAME defaults to deploytrack
#
# The image, like the distroless one packaging/Dockerfile builds:
#   - runs as uid:gid 65532:65532 (nonroot), entrypoint /usr/bin/deploytrack, command run;
#   - /var/lib/deploytrack is a volume, mode 0700, owned by 65532, so that a fresh named
#     volume mounted there starts out writable for the agent;
#   - CA certificates in /etc/ssl/certs/ca-certificates.crt;
#   - the label deploytrack.enable=false, so the agent does not report itself;
#   - no shell, no package manager;
#   - /var/lib/dpkg/status.d/<package>, one dpkg status entry per Debian package it holds,
#     as distroless images have, so that image scanners see glibc and the rest.
#
# Needs: docker (a reachable engine), dpkg, ldd, tar; cargo when the release binary is
# missing (target/release/deploytrack, or $CARGO_TARGET_DIR/release/deploytrack).
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
umask 022

die() {
    echo "build-image: $*" >&2
    exit 1
}

name="${1:-deploytrack}"
command -v docker >/dev/null || die "the docker client is not installed"
command -v dpkg-query >/dev/null || die "dpkg is missing: the image is made of this machine's Debian packages"
command -v ldd >/dev/null || die "ldd is missing: apt-get install libc-bin"

# 1. The release binary.
bin="${CARGO_TARGET_DIR:-target}/release/deploytrack"
if [ ! -x "$bin" ]; then
    command -v cargo >/dev/null || die "$bin is missing and cargo is not installed (https://rustup.rs)"
    cargo build --release --locked
fi
[ -x "$bin" ] || die "$bin was not built"
version="$("$bin" --version | awk '{print $2}')"
[ -n "$version" ] || die "'$bin --version' printed no version"

work="$(mktemp -d "${TMPDIR:-/tmp}/deploytrack-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"

# 2. The Debian packages: the owners of every library the binary loads, and the CA
#    certificates. Package names come with their architecture (libc6:arm64 on arm64).
packages=()
while read -r lib; do
    owner="$(dpkg-query -S "$lib" 2>/dev/null | head -n 1)" || true
    [ -n "$owner" ] || owner="$(dpkg-query -S "$(readlink -f "$lib")" 2>/dev/null | head -n 1)" || true
    [ -n "$owner" ] || die "no Debian package owns $lib, which $bin loads"
    packages+=("${owner%%: *}")
done < <(ldd "$bin" | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}')
dpkg-query -W -f '${db:Status-Status}' ca-certificates 2>/dev/null | grep -qx installed ||
    die "ca-certificates is not installed: apt-get install ca-certificates"
packages+=("ca-certificates")
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)

# A package's file, at its real path under the root (on a merged-/usr system /lib is a
# link to usr/lib; the link itself is copied too).
copy_path() {
    local path="$1" dir top
    [ -e "$path" ] || [ -L "$path" ] || return 0
    top="/$(cut -d/ -f2 <<<"$path")"
    if [ -L "$top" ] && [ ! -e "$root$top" ] && [ ! -L "$root$top" ]; then
        cp -a "$top" "$root$top"
    fi
    if [ -d "$path" ] && [ ! -L "$path" ]; then
        mkdir -p "$root$(readlink -f "$path")"
        return 0
    fi
    dir="$(readlink -f "$(dirname "$path")")"
    mkdir -p "$root$dir"
    cp -a "$path" "$root$dir/"
}

mkdir -p "$root/var/lib/dpkg/status.d"
for pkg in "${packages[@]}"; do
    short="${pkg%%:*}"
    while read -r path; do
        case "$path" in
        /usr/share/doc/*/copyright) ;;
        /usr/share/doc/* | /usr/share/man/* | /usr/share/info/* | /usr/share/lintian/*) continue ;;
        /usr/sbin/update-ca-certificates | /etc/ca-certificates/* | /usr/share/ca-certificates/*) continue ;;
        esac
        copy_path "$path"
    done < <(dpkg-query -L "$pkg")
    # The package's status entry, which image scanners read as dpkg does.
    dpkg-query -s "$pkg" >"$root/var/lib/dpkg/status.d/$short"
done
[ -s /etc/ssl/certs/ca-certificates.crt ] ||
    die "/etc/ssl/certs/ca-certificates.crt is missing: run update-ca-certificates"
mkdir -p "$root/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

# 3. The agent and the few files every image has.
install -D -m 0755 "$bin" "$root/usr/bin/deploytrack"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$root/etc/group"
printf '%s\n' 'hosts: files dns' >"$root/etc/nsswitch.conf"
install -d -m 1777 "$root/tmp"
install -d -m 0700 "$root/home/nonroot"
for shell in bin/sh usr/bin/sh; do
    [ ! -e "$root/$shell" ] || die "a shell ($shell) slipped into the image"
done

# 4. The root file system: everything root's, except the state directory and nonroot's home.
tar -C "$root" --sort=name --numeric-owner --owner=0 --group=0 \
    --exclude=./var/lib/deploytrack --exclude=./home/nonroot -cf "$work/rootfs.tar" .
mkdir -p "$work/owned/var/lib/deploytrack" "$work/owned/home/nonroot"
chmod 0700 "$work/owned/var/lib/deploytrack" "$work/owned/home/nonroot"
tar -C "$work/owned" --numeric-owner --owner=65532 --group=65532 \
    -rf "$work/rootfs.tar" ./var/lib/deploytrack ./home/nonroot

# 5. The image. These settings are packaging/Dockerfile's; a test checks they agree.
description="Reports which container images run where, from the Docker Engine to a deployment-tracking endpoint"
docker import \
    --change 'USER 65532:65532' \
    --change 'ENV DEPLOYTRACK_STATE_DIR=/var/lib/deploytrack' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'VOLUME ["/var/lib/deploytrack"]' \
    --change 'EXPOSE 9464' \
    --change "LABEL deploytrack.enable=\"false\" org.opencontainers.image.title=\"deploytrack\" org.opencontainers.image.description=\"$description\" org.opencontainers.image.version=\"$version\" org.opencontainers.image.licenses=\"Apache-2.0\"" \
    --change 'ENTRYPOINT ["/usr/bin/deploytrack"]' \
    --change 'CMD ["run"]' \
    --message "deploytrack $version" \
    "$work/rootfs.tar" "$name:$version" >/dev/null
docker tag "$name:$version" "$name:latest"

# 6. It starts: the loader and every library resolve inside the image.
got="$(docker run --rm --network none "$name:$version" --version)" ||
    die "the image $name:$version does not run its binary"
[ "$got" = "deploytrack $version" ] || die "the image $name:$version printed '$got'"
echo "build-image: OK $name:$version $name:latest ($(printf '%s ' "${packages[@]}")+ deploytrack)" >&2
