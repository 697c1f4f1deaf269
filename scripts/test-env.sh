#!/usr/bin/env bash
# Prepare the local Docker test environment for deploytrack's tests.
#
#   - installs docker.io, docker-registry and busybox-static from Debian if missing
#   - starts dockerd (socket /var/run/docker.sock) if `docker version` does not answer
#   - starts a registry on 127.0.0.1:5000 (data in /tmp/deploytrack-registry-data)
#   - builds the test images (busybox rootfs, `docker import`, no internet needed):
#       localhost:5000/deploytrack-test/app:1     pushed; RepoDigests for app AND mirror
#       localhost:5000/deploytrack-test/mirror:1  same image as app:1, second repository
#       localhost:5000/deploytrack-test/app:2     pushed; different content and digest
#       deploytrack-test/local:1                  imported only: no RepoDigests
#       localhost:5000/deploytrack-test/arm:1     linux/arm64/v8, pushed (its binaries are
#                                                 amd64, so it runs here: the platform case)
#   - installs Podman and serves its Docker-compatible API on $PODMAN_SOCK, with app:1
#     pulled into it (the agent is tested against both engines)
#
# Idempotent, and a fast no-op when everything is up. Safe to run concurrently
# (serialised by flock). Progress goes to stderr; stdout stays empty.
# It never removes anything that is in order: only a test image found broken
# (missing, without the expected RepoDigests, or gone from the registry) is
# untagged and rebuilt, so its digests change. Digests are not stable across
# rebuilds: tests must read them with `docker image inspect`, not hardcode them.
# The daemons started here keep running after it exits (dockerd:
# /var/run/docker.pid, registry: /tmp/deploytrack-registry.pid, logs in /tmp).
set -euo pipefail

readonly LOCK=/tmp/deploytrack-test-env.lock
readonly DOCKERD_LOG=/tmp/deploytrack-dockerd.log
readonly REGISTRY_ADDR=127.0.0.1:5000
readonly REGISTRY_CONF=/tmp/deploytrack-registry.yml
readonly REGISTRY_DATA=/tmp/deploytrack-registry-data
readonly REGISTRY_LOG=/tmp/deploytrack-registry.log
readonly REGISTRY_PID=/tmp/deploytrack-registry.pid
readonly REG=localhost:5000/deploytrack-test

readonly APP1=$REG/app:1
readonly APP2=$REG/app:2
readonly MIRROR1=$REG/mirror:1
readonly LOCAL1=deploytrack-test/local:1
readonly ARM1=$REG/arm:1
readonly PODMAN_SOCK=/run/deploytrack-podman.sock
readonly PODMAN_LOG=/tmp/deploytrack-podman.log

log() { printf 'test-env: %s\n' "$*" >&2; }
die() { printf 'test-env: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- privileges
# SUDO is empty for root, (sudo -n) for others when sudo exists.
SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
fi
can_root() { [ "$(id -u)" -eq 0 ] || [ "${#SUDO[@]}" -gt 0 ]; }
as_root() {
    can_root || die "this step needs root or sudo: $*"
    "${SUDO[@]}" "$@"
}

# ---------------------------------------------------------------- lock
# fd 9 holds the lock; every background daemon gets `9>&-` so that it does not
# inherit (and keep holding) the lock after this script exits.
# The fd is opened read-only (flock does not need more), so that root and other
# users can share one lock file in /tmp.
if [ ! -e "$LOCK" ]; then
    (umask 000 && : >>"$LOCK") 2>/dev/null || true
fi
exec 9<"$LOCK"
if ! flock -w 600 9; then
    die "could not take $LOCK within 600 s (another test-env.sh is stuck?)"
fi

# ---------------------------------------------------------------- packages
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker-registry >/dev/null 2>&1 \
    || [ ! -x /bin/busybox ] || ! command -v podman >/dev/null 2>&1 \
    || ! command -v openssl >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
    if ! can_root; then
        die "dockerd, docker-registry, podman, openssl, ip or /bin/busybox is missing and installing them needs root or sudo."
    fi
    log "installing docker.io docker-registry busybox-static podman openssl iproute2 (apt-get)"
    apt_log=$(mktemp /tmp/deploytrack-apt.XXXXXX)
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update >"$apt_log" 2>&1 \
        || ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            docker.io docker-registry busybox-static podman openssl iproute2 >>"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
    hash -r
fi

# ---------------------------------------------------------------- docker client
DOCKER=(docker)
if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -gt 0 ] && [ -S /var/run/docker.sock ] \
    && [ ! -w /var/run/docker.sock ]; then
    DOCKER=("${SUDO[@]}" docker)
fi
dk() { "${DOCKER[@]}" "$@"; }

docker_up() { timeout 10 "${DOCKER[@]}" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# Run a command quietly; show its output only when it fails.
quiet() {
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        die "command failed: $*"
    fi
}

# ---------------------------------------------------------------- dockerd
if ! docker_up; then
    if ! can_root; then
        [ ! -S /var/run/docker.sock ] \
            || die "the Docker engine does not answer on /var/run/docker.sock for this user: run as root or with sudo, or join the docker group."
        die "dockerd is not running and starting it needs root or sudo."
    fi
    log "starting dockerd (log: $DOCKERD_LOG)"
    "${SUDO[@]}" setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &
    for _ in $(seq 1 120); do
        docker_up && break
        sleep 0.5
    done
    if ! docker_up; then
        tail -n 40 "$DOCKERD_LOG" >&2 || true
        die "dockerd did not answer \`docker version\` within 60 s (log: $DOCKERD_LOG)"
    fi
    if [ "${#DOCKER[@]}" -eq 1 ] && [ "$(id -u)" -ne 0 ] && [ ! -w /var/run/docker.sock ] \
        && [ "${#SUDO[@]}" -gt 0 ]; then
        DOCKER=("${SUDO[@]}" docker)
    fi
fi

# ---------------------------------------------------------------- registry
# Minimal HTTP/1.0 client over bash's /dev/tcp (curl is not guaranteed in CI).
# Prints the response head (status line and headers).
http_head() {
    local method=$1 path=$2
    # shellcheck disable=SC2016 # the inner script expands its own arguments
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
        printf "%s %s HTTP/1.0\r\nHost: localhost:5000\r\nAccept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json\r\nConnection: close\r\n\r\n" "$2" "$3" >&3
        while IFS= read -r line <&3; do
            line=${line%$'\''\r'\''}
            [ -z "$line" ] && break
            printf "%s\n" "$line"
        done
    ' _ "$REGISTRY_ADDR" "$method" "$path" 2>/dev/null
}

registry_up() {
    local head
    head=$(http_head GET /v2/) || return 1
    [[ $head == "HTTP/1."?" 200"* ]]
}

# Digest the registry serves for repo:tag (empty when it has no such manifest).
registry_digest() {
    local name=$1 tag=$2 head
    head=$(http_head HEAD "/v2/$name/manifests/$tag") || return 0
    [[ $(head -n 1 <<<"$head") == "HTTP/1."?" 200"* ]] || return 0
    sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p' <<<"$head"
}

if ! registry_up; then
    log "starting docker-registry on $REGISTRY_ADDR (data: $REGISTRY_DATA, log: $REGISTRY_LOG)"
    as_root mkdir -p "$REGISTRY_DATA"
    cat >"$REGISTRY_CONF" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DATA
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
YML
    "${SUDO[@]}" setsid docker-registry serve "$REGISTRY_CONF" >"$REGISTRY_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$REGISTRY_PID"
    for _ in $(seq 1 60); do
        registry_up && break
        sleep 0.5
    done
    if ! registry_up; then
        tail -n 40 "$REGISTRY_LOG" >&2 || true
        die "docker-registry did not answer on http://$REGISTRY_ADDR/v2/ within 30 s (log: $REGISTRY_LOG)"
    fi
fi

# ---------------------------------------------------------------- images
repo_digests() { dk image inspect --format '{{join .RepoDigests " "}}' "$1" 2>/dev/null; }

# image_ok REF [PUSHED_REF...]: REF exists locally and, for every PUSHED_REF
# (repository:tag on localhost:5000), it carries a RepoDigest for that repository
# equal to the digest the registry serves for that tag.
image_ok() {
    local ref=$1 digests pushed repo tag want got
    shift
    digests=$(repo_digests "$ref") || return 1
    for pushed in "$@"; do
        repo=${pushed%:*}
        tag=${pushed##*:}
        got=$(registry_digest "${repo#localhost:5000/}" "$tag")
        [ -n "$got" ] || return 1
        want="$repo@$got"
        [[ " $digests " == *" $want "* ]] || return 1
    done
}

WORK=""
cleanup() { [ -z "$WORK" ] || rm -rf "$WORK"; }
trap cleanup EXIT
ensure_work() { [ -n "$WORK" ] || WORK=$(mktemp -d /tmp/deploytrack-rootfs.XXXXXX); }

# import_image REF CONTENT [PLATFORM]: busybox rootfs with /etc/deploytrack-test-version=CONTENT
import_image() {
    local ref=$1 content=$2 platform=${3:-} root
    ensure_work
    root=$(mktemp -d "$WORK/rootfs.XXXXXX")
    mkdir -p "$root/bin" "$root/etc" "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    ln -s busybox "$root/bin/sleep"
    ln -s busybox "$root/bin/sh"
    ln -s busybox "$root/bin/true"
    printf '%s\n' "$content" >"$root/etc/deploytrack-test-version"
    local args=(import -c 'CMD ["/bin/sleep","3600"]')
    [ -z "$platform" ] || args+=(--platform "$platform")
    tar -C "$root" -c . | quiet dk "${args[@]}" - "$ref"
}

# Remove tags so that a rebuild starts clean; containers of tests may still hold
# the old image (it then just stays around untagged).
# The old image IDs are removed at the end unless something still holds them.
OLD_IDS=()
untag() {
    local ref id
    for ref in "$@"; do
        if id=$(dk image inspect --format '{{.Id}}' "$ref" 2>/dev/null); then
            OLD_IDS+=("$id")
            quiet dk rmi -f "$ref"
        fi
    done
}
remove_old_images() {
    local id
    for id in "${OLD_IDS[@]}"; do
        # only if it is still present and no longer tagged (else a container holds it)
        if [ "$(dk image inspect --format '{{len .RepoTags}}' "$id" 2>/dev/null)" = 0 ]; then
            dk rmi "$id" >/dev/null 2>&1 || true
        fi
    done
}

# push_cycle REF...: push all, remove all, pull all, so that pulls record RepoDigests.
push_cycle() {
    local ref
    for ref in "$@"; do quiet dk push "$ref"; done
    for ref in "$@"; do quiet dk rmi "$ref"; done
    for ref in "$@"; do quiet dk pull "$ref"; done
}

# os/architecture[/variant] of a local image. Read from the JSON so that the
# template works with both old and new clients (new ones fail on a missing key).
platform_of() {
    local json os="" arch="" variant="" re
    json=$(dk image inspect --format '{{json .}}' "$1" 2>/dev/null) || return 0
    re='"Os":"([^"]*)"';           [[ $json =~ $re ]] && os=${BASH_REMATCH[1]}
    re='"Architecture":"([^"]*)"'; [[ $json =~ $re ]] && arch=${BASH_REMATCH[1]}
    re='"Variant":"([^"]*)"';      [[ $json =~ $re ]] && variant=${BASH_REMATCH[1]}
    printf '%s/%s%s\n' "$os" "$arch" "${variant:+/$variant}"
}

# Rewrite REF's image config to architecture arm64, variant v8 (same layer).
# `docker load` re-tags REF to the new image; the old one is then removed.
set_platform_arm64_v8() {
    local ref=$1 old dir cfg
    old=$(dk image inspect --format '{{.Id}}' "$ref")
    ensure_work
    dir=$(mktemp -d "$WORK/save.XXXXXX")
    dk save "$ref" | tar -C "$dir" -x
    cfg=$(sed -n 's/.*"Config":"\([^"]*\)".*/\1/p' "$dir/manifest.json")
    if [ -z "$cfg" ] || [ ! -f "$dir/$cfg" ]; then
        log "unexpected \`docker save\` layout (no config in manifest.json)"
        return 1
    fi
    sed -i -e 's/"variant":"[^"]*",\{0,1\}//' \
        -e 's/"architecture":"[^"]*"/"architecture":"arm64","variant":"v8"/' "$dir/$cfg"
    (cd "$dir" && tar -c .) | quiet dk load
    if [ "$(platform_of "$ref")" != linux/arm64/v8 ]; then
        log "docker load did not give $ref the platform linux/arm64/v8"
        return 1
    fi
    if [ "$(dk image inspect --format '{{.Id}}' "$ref")" != "$old" ]; then
        dk rmi "$old" >/dev/null 2>&1 || true
    fi
}

# a + c: app:1 and mirror:1 are one image with two RepoDigests.
if ! image_ok "$APP1" "$APP1" "$MIRROR1" || ! image_ok "$MIRROR1" "$APP1" "$MIRROR1"; then
    log "building $APP1 and $MIRROR1"
    untag "$APP1" "$MIRROR1"
    import_image "$APP1" "$APP1"
    quiet dk tag "$APP1" "$MIRROR1"
    push_cycle "$APP1" "$MIRROR1"
    image_ok "$APP1" "$APP1" "$MIRROR1" || die "$APP1 lacks RepoDigests for app and mirror: $(repo_digests "$APP1")"
fi

# b: app:2, different content.
if ! image_ok "$APP2" "$APP2"; then
    log "building $APP2"
    untag "$APP2"
    import_image "$APP2" "$APP2"
    push_cycle "$APP2"
    image_ok "$APP2" "$APP2" || die "$APP2 has no RepoDigest after push/pull: $(repo_digests "$APP2")"
fi

# d: local:1, never pushed, so no RepoDigests.
if ! digests=$(repo_digests "$LOCAL1") || [ -n "$digests" ]; then
    log "building $LOCAL1"
    untag "$LOCAL1"
    import_image "$LOCAL1" "$LOCAL1"
fi

# e: arm:1, linux/arm64/v8 (for inspection only; it cannot run here).
# dockerd 20.10 accepts `docker import --platform linux/arm64/v8` but only uses the
# OS part: the image config still says amd64 (it writes runtime.GOARCH). In that
# case rewrite the config through `docker save` | edit | `docker load`.
ARM_OK=1
if ! image_ok "$ARM1" "$ARM1" || [ "$(platform_of "$ARM1")" != linux/arm64/v8 ]; then
    log "building $ARM1"
    untag "$ARM1"
    ensure_work
    if ! import_image "$ARM1" "$ARM1" linux/arm64/v8 2>"$WORK/arm-import.err"; then
        log "NOTE: 'docker import --platform linux/arm64/v8' was refused; importing without it:"
        sed 's/^/test-env:   /' "$WORK/arm-import.err" >&2 || true
        import_image "$ARM1" "$ARM1"
    fi
    if [ "$(platform_of "$ARM1")" != linux/arm64/v8 ]; then
        set_platform_arm64_v8 "$ARM1" || ARM_OK=0
    fi
    if [ "$ARM_OK" -eq 1 ]; then
        push_cycle "$ARM1"
        image_ok "$ARM1" "$ARM1" || die "$ARM1 has no RepoDigest after push/pull: $(repo_digests "$ARM1")"
        platform=$(platform_of "$ARM1")
        [ "$platform" = linux/arm64/v8 ] || die "$ARM1 came back from the registry as $platform, not linux/arm64/v8"
    else
        untag "$ARM1"
        log "NOTE: skipping $ARM1: could not make a linux/arm64/v8 image with this engine"
    fi
fi

remove_old_images

# ---------------------------------------------------------------- podman
podman_up() { timeout 10 "${DOCKER[@]}" -H "unix://$PODMAN_SOCK" version >/dev/null 2>&1; }
if ! podman_up; then
    log "starting the Podman API service on $PODMAN_SOCK (log: $PODMAN_LOG)"
    "${SUDO[@]}" rm -f "$PODMAN_SOCK"
    "${SUDO[@]}" setsid podman system service --time=0 "unix://$PODMAN_SOCK" >"$PODMAN_LOG" 2>&1 </dev/null 9>&- &
    for _ in $(seq 1 60); do
        podman_up && break
        sleep 0.5
    done
    podman_up || { tail -n 40 "$PODMAN_LOG" >&2 || true; die "podman did not answer on $PODMAN_SOCK within 30 s"; }
fi
# Pull app:1 unless Podman already has the registry's current digest of it.
app1_repo=${APP1%:*}
want=$(registry_digest "${app1_repo#localhost:5000/}" "${APP1##*:}")
have=$("${SUDO[@]}" podman image inspect --format '{{join .RepoDigests " "}}' "$APP1" 2>/dev/null || true)
if [[ " $have " != *"@$want "* ]]; then
    log "pulling $APP1 into Podman"
    quiet "${SUDO[@]}" podman pull -q --tls-verify=false "$APP1"
fi

# ---------------------------------------------------------------- summary
images=("$APP1" "$MIRROR1" "$APP2" "$LOCAL1")
[ "$ARM_OK" -eq 0 ] || images+=("$ARM1")
for ref in "${images[@]}"; do
    printf 'test-env: %s %s RepoDigests=%s\n' "$ref" "$(platform_of "$ref")" \
        "$(dk image inspect --format '{{json .RepoDigests}}' "$ref")" >&2
done
