#!/usr/bin/env bash
# Builds the container image of deploytrack without pulling anything: the release binary
# plus the files of Debian packages it needs (the C library and libgcc_s it links, found
# from its ELF headers and dpkg, and the CA certificates), assembled as a root file system.
#
#   packaging/build-image.sh [NAME]
#       NAME:<version> and NAME:latest (NAME defaults to deploytrack) for this machine's own
#       platform, `docker import`ed: works with any engine (the legacy builder of Docker
#       20.10 included: nothing is built, nothing pulled), on any architecture Debian has.
#
#   packaging/build-image.sh --platforms linux/amd64,linux/arm64,linux/arm/v7 --push REPOSITORY
#       REPOSITORY:<version> and REPOSITORY:latest as one OCI image index with an image per
#       platform, pushed to REPOSITORY's registry. Each platform's image holds that
#       platform's binary (packaging/build-cross.sh builds the ARM ones when they are
#       missing) and that architecture's Debian packages, installed beside the machine's own
#       (multiarch: dpkg --add-architecture arm64 armhf; apt-get install libc6:arm64
#       libgcc-s1:arm64 libc6:armhf libgcc-s1:armhf). Built by `docker buildx build` from
#       FROM scratch and an ADD of each platform's root file system: nothing runs during the
#       build, so no emulation is needed. Needs an engine whose builder can push a
#       multi-platform image (the containerd image store: Docker 29's default, or Docker
#       >= 24 with the containerd-snapshotter feature), or a buildx builder of the
#       docker-container driver; DOCKER_HOST and `docker login` as for any push.
#
# Every image, like the distroless one packaging/Dockerfile builds:
#   - runs as uid:gid 65532:65532 (nonroot), entrypoint /usr/bin/deploytrack, command run;
#   - /var/lib/deploytrack is a volume, mode 0700, owned by 65532, so that a fresh named
#     volume mounted there starts out writable for the agent;
#   - CA certificates in /etc/ssl/certs/ca-certificates.crt;
#   - the label deploytrack.enable=false, so the agent does not report itself;
#   - no shell, no package manager;
#   - /var/lib/dpkg/status.d/<package>, one dpkg status entry per Debian package it holds,
#     as distroless images have, so that image scanners see glibc and the rest, with their
#     architecture and version.
#
# Needs: docker (a reachable engine), dpkg, readelf (binutils), tar; cargo when a release
# binary is missing (target/release/deploytrack, target/<triple>/release/deploytrack, under
# $CARGO_TARGET_DIR when it is set).
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
umask 022

die() {
    echo "build-image: $*" >&2
    exit 1
}

usage="usage: $0 [NAME] | $0 --platforms PLATFORM,... --push REPOSITORY"
name=deploytrack platforms="" push=""
while [ $# -gt 0 ]; do
    case "$1" in
    --platforms)
        [ $# -ge 2 ] || die "$usage"
        platforms="$2"
        shift 2
        ;;
    --push)
        [ $# -ge 2 ] || die "$usage"
        push="$2"
        shift 2
        ;;
    -*) die "$usage" ;;
    *)
        name="$1"
        shift
        ;;
    esac
done
[ -z "$platforms" ] || [ -n "$push" ] || die "--platforms needs --push REPOSITORY: a multi-platform image lives in a registry"
[ -z "$push" ] || [ -n "$platforms" ] || die "--push needs --platforms"
command -v docker >/dev/null || die "the docker client is not installed"
command -v dpkg-query >/dev/null || die "dpkg is missing: the image is made of Debian packages"
command -v readelf >/dev/null || die "readelf is missing: apt-get install binutils"

target="${CARGO_TARGET_DIR:-target}"
host_arch="$(dpkg --print-architecture)"

# platform PLATFORM: sets deb_arch, triple, machine (readelf's name) for a Docker platform.
platform() {
    case "$1" in
    linux/amd64) deb_arch=amd64 triple=x86_64-unknown-linux-gnu machine="Advanced Micro Devices X86-64" ;;
    linux/arm64 | linux/arm64/v8) deb_arch=arm64 triple=aarch64-unknown-linux-gnu machine=AArch64 ;;
    linux/arm/v7) deb_arch=armhf triple=armv7-unknown-linux-gnueabihf machine=ARM ;;
    *) die "platform $1 is not one this script builds (linux/amd64, linux/arm64, linux/arm/v7)" ;;
    esac
}

# binary: the release binary for deb_arch, built when it is missing.
binary() {
    local bin
    if [ "$deb_arch" = "$host_arch" ]; then
        bin="$target/release/deploytrack"
        if [ ! -x "$bin" ]; then
            command -v cargo >/dev/null || die "$bin is missing and cargo is not installed (https://rustup.rs)"
            cargo build --release --locked >&2
        fi
    else
        bin="$target/$triple/release/deploytrack"
        [ -x "$bin" ] || packaging/build-cross.sh "$triple" >/dev/null
    fi
    [ -x "$bin" ] || die "$bin was not built"
    [ "$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')" = "$machine" ] || die "$bin is not a $machine binary"
    echo "$bin"
}

work="$(mktemp -d "${TMPDIR:-/tmp}/deploytrack-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# rootfs BIN TAR: the image's root file system for the binary BIN (of deb_arch) in TAR.
# Sets packages to the Debian packages it holds.
rootfs() {
    local bin="$1" tar="$2" root="$work/rootfs-$deb_arch" multiarch lib so dir found owner pkg short path
    local -a queue seen
    rm -rf "$root" "$work/owned"
    mkdir -p "$root"
    multiarch="$(dpkg-architecture -a"$deb_arch" -qDEB_HOST_MULTIARCH 2>/dev/null)" ||
        case "$deb_arch" in amd64) multiarch=x86_64-linux-gnu ;; arm64) multiarch=aarch64-linux-gnu ;; armhf) multiarch=arm-linux-gnueabihf ;; esac

    # 1. The Debian packages: the owners of the loader and of every library the binary
    #    loads, directly or through another library, read from the ELF headers (no need to
    #    run the binary: it may be another architecture's), and the CA certificates.
    packages=() queue=() seen=()
    lib="$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
    [ -n "$lib" ] || die "$bin names no program interpreter: not a dynamically linked glibc binary"
    queue+=("$lib")
    while read -r so; do queue+=("$so"); done < <(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    while [ "${#queue[@]}" -gt 0 ]; do
        so="${queue[0]}"
        queue=("${queue[@]:1}")
        [[ " ${seen[*]} " != *" $so "* ]] || continue
        seen+=("$so")
        found=""
        if [[ $so == /* ]]; then
            [ -e "$so" ] && found="$so"
        else
            for dir in "/lib/$multiarch" "/usr/lib/$multiarch"; do
                [ -e "$dir/$so" ] && { found="$dir/$so"; break; }
            done
        fi
        [ -n "$found" ] || die "$so, which $bin loads, is not on this machine for $deb_arch: apt-get install libc6:$deb_arch libgcc-s1:$deb_arch (after dpkg --add-architecture $deb_arch; apt-get update)"
        owner="$(dpkg-query -S "$found" 2>/dev/null | head -n 1)" || true
        [ -n "$owner" ] || owner="$(dpkg-query -S "$(readlink -f "$found")" 2>/dev/null | head -n 1)" || true
        [ -n "$owner" ] || die "no Debian package owns $found, which $bin loads"
        pkg="${owner%%: *}"
        # Named with its architecture (dpkg does so only when several are installed).
        [[ $pkg == *:* ]] || pkg="$pkg:$(dpkg-query -W -f '${Architecture}' "$pkg")"
        packages+=("$pkg")
        while read -r dep; do queue+=("$dep"); done < <(readelf -d "$(readlink -f "$found")" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    done
    dpkg-query -W -f '${db:Status-Status}' ca-certificates 2>/dev/null | grep -qx installed ||
        die "ca-certificates is not installed: apt-get install ca-certificates"
    packages+=("ca-certificates")
    mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
    for pkg in "${packages[@]}"; do
        case "$pkg" in
        ca-certificates | *:all | *:"$deb_arch") ;;
        *) die "$pkg is not a package of $deb_arch" ;;
        esac
    done

    # 2. Their files, at their real paths under the root (on a merged-/usr system /lib is
    #    a link to usr/lib; the link itself is copied too), and their status entries.
    mkdir -p "$root/var/lib/dpkg/status.d"
    for pkg in "${packages[@]}"; do
        short="${pkg%%:*}"
        while read -r path; do
            case "$path" in
            /usr/share/doc/*/copyright) ;;
            /usr/share/doc/* | /usr/share/man/* | /usr/share/info/* | /usr/share/lintian/*) continue ;;
            /usr/sbin/update-ca-certificates | /etc/ca-certificates/* | /usr/share/ca-certificates/*) continue ;;
            esac
            copy_path "$root" "$path"
        done < <(dpkg-query -L "$pkg")
        # The package's status entry, which image scanners read as dpkg does.
        dpkg-query -s "$pkg" >"$root/var/lib/dpkg/status.d/$short"
    done
    # The bundle update-ca-certificates made from the package (the same for every
    # architecture: ca-certificates is Architecture: all).
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

    # 4. The root file system: everything root's, except the state directory and nonroot's
    #    home.
    tar -C "$root" --sort=name --numeric-owner --owner=0 --group=0 \
        --exclude=./var/lib/deploytrack --exclude=./home/nonroot -cf "$tar" .
    mkdir -p "$work/owned/var/lib/deploytrack" "$work/owned/home/nonroot"
    chmod 0700 "$work/owned/var/lib/deploytrack" "$work/owned/home/nonroot"
    tar -C "$work/owned" --numeric-owner --owner=65532 --group=65532 \
        -rf "$tar" ./var/lib/deploytrack ./home/nonroot
}

# copy_path ROOT PATH: a package's file, at its real path under ROOT.
copy_path() {
    local root="$1" path="$2" dir top
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

# settings VERSION: the image's configuration, one Dockerfile instruction a line. These are
# packaging/Dockerfile's; a test checks that they agree.
settings() {
    local description="Reports which container images run where, from the Docker Engine to a deployment-tracking endpoint"
    printf '%s\n' \
        'USER 65532:65532' \
        'ENV DEPLOYTRACK_STATE_DIR=/var/lib/deploytrack' \
        'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        'VOLUME ["/var/lib/deploytrack"]' \
        'EXPOSE 9464' \
        "LABEL deploytrack.enable=\"false\" org.opencontainers.image.title=\"deploytrack\" org.opencontainers.image.description=\"$description\" org.opencontainers.image.version=\"$1\" org.opencontainers.image.licenses=\"Apache-2.0\"" \
        'ENTRYPOINT ["/usr/bin/deploytrack"]' \
        'CMD ["run"]'
}

if [ -z "$platforms" ]; then
    # ------------------------------------------------ this machine's platform, imported
    case "$host_arch" in
    amd64) platform linux/amd64 ;;
    arm64) platform linux/arm64 ;;
    armhf) platform linux/arm/v7 ;;
    *) die "no image platform for the Debian architecture $host_arch" ;;
    esac
    bin="$(binary)"
    version="$("$bin" --version | awk '{print $2}')"
    [ -n "$version" ] || die "'$bin --version' printed no version"
    rootfs "$bin" "$work/rootfs.tar"
    changes=()
    while read -r setting; do changes+=(--change "$setting"); done < <(settings "$version")
    docker import "${changes[@]}" --message "deploytrack $version" "$work/rootfs.tar" "$name:$version" >/dev/null
    docker tag "$name:$version" "$name:latest"
    # It starts: the loader and every library resolve inside the image.
    got="$(docker run --rm --network none "$name:$version" --version)" ||
        die "the image $name:$version does not run its binary"
    [ "$got" = "deploytrack $version" ] || die "the image $name:$version printed '$got'"
    echo "build-image: OK $name:$version $name:latest ($(printf '%s ' "${packages[@]}")+ deploytrack)" >&2
    exit 0
fi

# ---------------------------------------------------- one index for several platforms
docker buildx version >/dev/null 2>&1 || die "docker buildx is missing (the docker-buildx plugin)"
IFS=, read -r -a wanted <<<"$platforms"
ctx="$work/context"
mkdir -p "$ctx"
version=""
summary=()
for p in "${wanted[@]}"; do
    platform "$p"
    bin="$(binary)"
    # The version from the source every binary was built from, read without running a
    # foreign binary: Cargo.toml's, which `--version` prints.
    v="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
    [ -z "$version" ] || [ "$v" = "$version" ] || die "the binaries disagree on the version"
    version="$v"
    grep -aqF "$version" "$bin" || die "$bin does not hold the version $version: rebuild it"
    mkdir -p "$ctx/$p"
    rootfs "$bin" "$ctx/$p/rootfs.tar"
    summary+=("$p: $(printf '%s ' "${packages[@]}")+ $bin")
done
[ -n "$version" ] || die "no platform given"
{
    echo 'FROM scratch'
    echo 'ARG TARGETPLATFORM'
    # ADD unpacks the tar with its owners and modes (COPY would make everything root's).
    # shellcheck disable=SC2016 # a Dockerfile variable, expanded by the builder
    echo 'ADD ${TARGETPLATFORM}/rootfs.tar /'
    settings "$version"
} >"$ctx/Dockerfile"
log="$work/buildx.log"
if ! docker buildx build --platform "$platforms" --provenance=false --sbom=false \
    -t "$push:$version" -t "$push:latest" \
    --output type=image,push=true,oci-mediatypes=true "$ctx" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "docker buildx build of $push:$version failed"
fi
index="$(docker buildx imagetools inspect "$push:$version")" || die "docker buildx imagetools inspect $push:$version failed"
grep -q '^MediaType: *application/vnd.oci.image.index.v1+json' <<<"$index" ||
    die "$push:$version is not an OCI image index: $index"
for p in "${wanted[@]}"; do
    grep -q "^ *Platform: *$p\$" <<<"$index" || die "the index $push:$version lacks $p: $index"
done
printf 'build-image: %s\n' "${summary[@]}" >&2
echo "build-image: OK $push:$version $push:latest (${wanted[*]})" >&2
