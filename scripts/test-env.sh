#!/usr/bin/env bash
# Prepare the local Docker test environment for deploytrack's tests.
#
#   - installs docker.io, docker-registry and busybox-static from Debian if missing,
#     systemd for systemd-analyze (the unit's exposure check) and apache2-utils for htpasswd
#   - starts dockerd (socket /var/run/docker.sock) if `docker version` does not answer
#   - starts a registry on 127.0.0.1:5000 (data in /tmp/deploytrack-registry-data)
#   - starts a registry that wants credentials (HTTP basic auth, htpasswd) on 127.0.0.1:5002:
#       user       deploytrack-test, password Pr1vate-Pa55word; also in
#                  /tmp/deploytrack-authreg/credentials as `user:password` (mode 0600)
#       files      /tmp/deploytrack-authreg/{config.yml,htpasswd,data/} (config, users,
#                  storage); log /tmp/deploytrack-authreg.log, pid
#                  /tmp/deploytrack-authreg.pid
#       log        info level plus the access log: one line per HTTP request, e.g.
#                    127.0.0.1 - - [...] "GET /v2/deploytrack-test/private/manifests/1 HTTP/1.1" 200 ...
#                  so `grep -c '"GET /v2/deploytrack-test/private/manifests/' LOG` counts the
#                  manifest GETs (each successful request also logs a `msg="response
#                  completed"` line with http.request.method and http.request.uri)
#       image      127.0.0.1:5002/deploytrack-test/private:1 (busybox rootfs, its own
#                  content), pushed from the classic engine with the docker config
#                  /tmp/deploytrack-authreg/docker-config (logged in), then removed from it:
#                  it is in that registry only, on neither engine; tests pull it with
#                  credentials and remove it again. Left alone while the registry serves it.
#   - builds the test images (busybox rootfs, `docker import`, no internet needed):
#       localhost:5000/deploytrack-test/app:1     pushed; RepoDigests for app AND mirror
#       localhost:5000/deploytrack-test/mirror:1  same image as app:1, second repository
#       localhost:5000/deploytrack-test/app:2     pushed; different content and digest
#       deploytrack-test/local:1                  imported only: no RepoDigests
#       localhost:5000/deploytrack-test/arm:1     linux/arm64/v8, pushed (its binaries are
#                                                 amd64, so it runs here: the platform case)
#   - installs Podman and serves its Docker-compatible API on $PODMAN_SOCK, with app:1
#     pulled into it (the agent is tested against both engines)
#   - Podman 5.8 (Debian sid) and 6.1 (Debian experimental), which need glibc 2.38, each in
#     a rootfs made by mmdebstrap (installed when missing, with curl and uidmap):
#       rootfs     /opt/deploytrack-podman5/rootfs and /opt/deploytrack-podman6/rootfs
#                  (package versions in /opt/deploytrack-podmanN/VERSIONS); made once, then
#                  reused: remove /opt/deploytrack-podmanN to fetch the suite's newest again.
#                  When Debian's suite no longer has podman 5.8.x (sid) or 6.1.x
#                  (experimental), the script stops with one line saying what it found.
#       config     in the rootfs: containers.conf (runc, cgroupfs, netns none, events to a
#                  file; 6.1: pids_limit 0), registries.conf.d/deploytrack-test.conf
#                  (localhost:5000 and 127.0.0.1:5002 insecure), /etc/hosts
#       service    /opt/deploytrack-podmanN/start, run as `setsid unshare -m`: a mount
#                  namespace of its own (6.1 gets a cgroup2 mount there) where the host's
#                  /run/deploytrack-podmanN is the chroot's /run, then `chroot ROOTFS podman
#                  system service`. Socket /run/deploytrack-podmanN/podman/podman.sock, pid
#                  /run/deploytrack-podmanN.pid, log /tmp/deploytrack-podmanN.log.
#                  The chroot's own CLI: nsenter --target $(cat /run/deploytrack-podmanN.pid)
#                  --mount --root --wd podman ...
#       images     app:1 pulled into each
#   - rootless Podman 4.3: the user deploytrack-rootless (home /var/lib/deploytrack-rootless,
#     65536 subordinate IDs in /etc/subuid and /etc/subgid, vfs storage), its service on
#     /run/user/<uid>/podman/podman.sock (XDG_RUNTIME_DIR /run/user/<uid>, 0700), log
#     /tmp/deploytrack-podman-rootless.log, pid /tmp/deploytrack-podman-rootless.pid; app:1
#     pulled into it. Its CLI: podman --remote --url unix:///run/user/<uid>/podman/podman.sock
#   - a second Docker engine, 28.5 with the containerd image store ("docker28"):
#       binaries   Debian sid's docker.io, containerd, docker-compose, docker-buildx and
#                  tini-static, unpacked (not installed) into /opt/deploytrack-docker28;
#                  versions in /opt/deploytrack-docker28/VERSIONS. dockerd is
#                  /opt/deploytrack-docker28/usr/sbin/dockerd; put the directory
#                  /opt/deploytrack-docker28/path first on its PATH (sid's containerd,
#                  containerd-shim-runc-v2, docker-init, docker-proxy and bookworm's runc).
#                  Remove /opt/deploytrack-docker28 to fetch sid's newest again.
#       plugins    `docker compose` (v2) and `docker buildx` for every user, linked in
#                  /usr/local/lib/docker/cli-plugins
#       engine     socket unix:///var/run/deploytrack-docker28.sock, config
#                  /etc/deploytrack-docker28/daemon.json (containerd-snapshotter), data
#                  root /var/lib/deploytrack-docker28, exec root /var/run/deploytrack-d28/x,
#                  pidfile /var/run/deploytrack-d28/docker.pid, log
#                  /tmp/deploytrack-docker28.log
#       network    its own network namespace deploytrack-d28 (/var/run/netns/deploytrack-d28;
#                  enter it with nsenter --net=..., not `ip netns exec`), where a second
#                  docker-registry serves the same config and storage on 127.0.0.1:5000
#                  (log /tmp/deploytrack-registry-d28.log), so localhost:5000 is the same
#                  registry for both engines; likewise a second registry with credentials
#                  serves the same config and storage on 127.0.0.1:5002 (log
#                  /tmp/deploytrack-authreg-d28.log, pid /tmp/deploytrack-authreg-d28.pid)
#       images     app:1, mirror:1 and app:2 pulled from the registry (same digests);
#                  deploytrack-test/local:1 imported, never pushed (it has RepoDigests all
#                  the same on this store); localhost:5000/deploytrack-test/multi:1, an OCI
#                  index for linux/amd64, linux/arm64 and linux/arm/v7 built with buildx and
#                  pushed (every variant carries the host's busybox, so each one runs here:
#                  `docker run --platform linux/arm/v7 ...`)
#   - deploytrack-test/systemd:bookworm on the classic engine, Debian 12 with systemd made
#     by mmdebstrap, for the packaging tests (scripts/test-systemd-image.sh)
#
# Idempotent, and a fast no-op when everything is up. Safe to run concurrently
# (serialised by flock). Progress goes to stderr; stdout stays empty.
# It never removes anything that is in order: only a test image found broken
# (missing, without the expected RepoDigests, or gone from the registry) is
# untagged and rebuilt, so its digests change. Digests are not stable across
# rebuilds: tests must read them with `docker image inspect`, not hardcode them.
# The daemons started here keep running after it exits (dockerd:
# /var/run/docker.pid, registries: /tmp/deploytrack-registry.pid and
# /tmp/deploytrack-authreg.pid, logs in /tmp).
set -euo pipefail

readonly LOCK=/tmp/deploytrack-test-env.lock
readonly DOCKERD_LOG=/tmp/deploytrack-dockerd.log
readonly REGISTRY_ADDR=127.0.0.1:5000
readonly REGISTRY_CONF=/tmp/deploytrack-registry.yml
readonly REGISTRY_DATA=/tmp/deploytrack-registry-data
readonly REGISTRY_LOG=/tmp/deploytrack-registry.log
readonly REGISTRY_PID=/tmp/deploytrack-registry.pid
readonly REG=localhost:5000/deploytrack-test

# The registry that wants credentials (see the header).
readonly AUTHREG_ADDR=127.0.0.1:5002
readonly AUTHREG_DIR=/tmp/deploytrack-authreg
readonly AUTHREG_CONF=$AUTHREG_DIR/config.yml
readonly AUTHREG_HTPASSWD=$AUTHREG_DIR/htpasswd
readonly AUTHREG_DATA=$AUTHREG_DIR/data
readonly AUTHREG_CREDENTIALS=$AUTHREG_DIR/credentials
readonly AUTHREG_DOCKER_CONFIG=$AUTHREG_DIR/docker-config
readonly AUTHREG_LOG=/tmp/deploytrack-authreg.log
readonly AUTHREG_PID=/tmp/deploytrack-authreg.pid
readonly AUTHREG_USER=deploytrack-test
readonly AUTHREG_PASSWORD=Pr1vate-Pa55word
readonly PRIVATE1=$AUTHREG_ADDR/deploytrack-test/private:1

readonly APP1=$REG/app:1
readonly APP2=$REG/app:2
readonly MIRROR1=$REG/mirror:1
readonly LOCAL1=deploytrack-test/local:1
readonly ARM1=$REG/arm:1
readonly PODMAN_SOCK=/run/deploytrack-podman.sock
readonly PODMAN_LOG=/tmp/deploytrack-podman.log

# The second engine (see the header).
readonly D28=/opt/deploytrack-docker28
readonly D28_PATH=$D28/path
readonly D28_VERSIONS=$D28/VERSIONS
readonly D28_PACKAGES=(docker.io containerd docker-compose docker-buildx tini-static)
readonly D28_CONF=/etc/deploytrack-docker28/daemon.json
readonly D28_DATA=/var/lib/deploytrack-docker28
readonly D28_RUN=/var/run/deploytrack-d28
readonly D28_PIDFILE=$D28_RUN/docker.pid
readonly D28_HOST=unix:///var/run/deploytrack-docker28.sock
readonly D28_LOG=/tmp/deploytrack-docker28.log
readonly D28_NETNS=deploytrack-d28
readonly D28_NETNS_PATH=/var/run/netns/$D28_NETNS
readonly D28_REGISTRY_LOG=/tmp/deploytrack-registry-d28.log
readonly D28_REGISTRY_PID=/tmp/deploytrack-registry-d28.pid
readonly D28_AUTHREG_LOG=/tmp/deploytrack-authreg-d28.log
readonly D28_AUTHREG_PID=/tmp/deploytrack-authreg-d28.pid
readonly CLI_PLUGINS=/usr/local/lib/docker/cli-plugins
readonly MULTI1=$REG/multi:1
readonly MULTI_PLATFORMS=(linux/amd64 linux/arm64 linux/arm/v7)

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
    || ! command -v openssl >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1 \
    || ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v htpasswd >/dev/null 2>&1; then
    if ! can_root; then
        die "dockerd, docker-registry, podman, openssl, ip, systemd-analyze, htpasswd or /bin/busybox is missing and installing them needs root or sudo."
    fi
    log "installing docker.io docker-registry busybox-static podman openssl iproute2 systemd apache2-utils (apt-get)"
    apt_log=$(mktemp /tmp/deploytrack-apt.XXXXXX)
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update >"$apt_log" 2>&1 \
        || ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            docker.io docker-registry busybox-static podman openssl iproute2 systemd apache2-utils \
            >>"$apt_log" 2>&1; then
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
# Prints the response head (status line and headers). Arguments: ADDR METHOD PATH
# [BASIC], where BASIC is base64 of user:password for an Authorization header.
# shellcheck disable=SC2016 # the script expands its own arguments
readonly HTTP_HEAD_SCRIPT='
    exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
    {
        printf "%s %s HTTP/1.0\r\nHost: localhost:%s\r\n" "$2" "$3" "${1##*:}"
        [ -z "${4:-}" ] || printf "Authorization: Basic %s\r\n" "$4"
        printf "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json\r\nConnection: close\r\n\r\n"
    } >&3
    while IFS= read -r line <&3; do
        line=${line%$'\''\r'\''}
        [ -z "$line" ] && break
        printf "%s\n" "$line"
    done
'
http_head() {
    timeout 5 bash -c "$HTTP_HEAD_SCRIPT" _ "$REGISTRY_ADDR" "$1" "$2" 2>/dev/null
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

# Media type of the manifest the registry serves for repo:tag (empty when none).
registry_media_type() {
    local name=$1 tag=$2 head
    head=$(http_head HEAD "/v2/$name/manifests/$tag") || return 0
    [[ $(head -n 1 <<<"$head") == "HTTP/1."?" 200"* ]] || return 0
    sed -n 's/^[Cc]ontent-[Tt]ype: *//p' <<<"$head"
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

# ---------------------------------------------------------------- registry with credentials
# 127.0.0.1:5002 wants HTTP basic auth (htpasswd: bcrypt, which is all the registry reads).
# Info level and the access log: tests count the requests an engine makes in its log.
AUTHREG_BASIC=$(printf '%s:%s' "$AUTHREG_USER" "$AUTHREG_PASSWORD" | base64 -w 0)
readonly AUTHREG_BASIC

# authreg_files: the config, the users and the credentials file for tests, each written
# only when it is not what it should be (a running registry read the users at its start).
authreg_files() {
    local conf
    mkdir -p "$AUTHREG_DIR"
    as_root mkdir -p "$AUTHREG_DATA"
    conf="version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $AUTHREG_DATA
  delete:
    enabled: true
http:
  addr: $AUTHREG_ADDR
auth:
  htpasswd:
    realm: deploytrack-test
    path: $AUTHREG_HTPASSWD"
    [ "$(cat "$AUTHREG_CONF" 2>/dev/null)" = "$conf" ] || printf '%s\n' "$conf" >"$AUTHREG_CONF"
    if ! htpasswd -vb "$AUTHREG_HTPASSWD" "$AUTHREG_USER" "$AUTHREG_PASSWORD" >/dev/null 2>&1; then
        quiet htpasswd -Bbc "$AUTHREG_HTPASSWD" "$AUTHREG_USER" "$AUTHREG_PASSWORD"
    fi
}
# The credentials file belongs to the user who runs this script (and the tests): mode 0600.
authreg_credentials() {
    [ "$(cat "$AUTHREG_CREDENTIALS" 2>/dev/null)" != "$AUTHREG_USER:$AUTHREG_PASSWORD" ] || return 0
    mkdir -p "$AUTHREG_DIR"
    printf '%s:%s\n' "$AUTHREG_USER" "$AUTHREG_PASSWORD" \
        | as_root install -m 0600 -o "$(id -u)" -g "$(id -g)" /dev/stdin "$AUTHREG_CREDENTIALS"
}

# authreg_status BASIC [NSENTER...]: HTTP status of GET /v2/ on $AUTHREG_ADDR, with the
# credentials BASIC (empty: none), in the network namespace NSENTER enters (none: here).
authreg_status() {
    local basic=$1 head code
    shift
    [ $# -eq 0 ] || set -- as_root "$@"
    head=$("$@" timeout 5 bash -c "$HTTP_HEAD_SCRIPT" _ "$AUTHREG_ADDR" GET /v2/ "$basic" 2>/dev/null) \
        || return 1
    read -r _ code _ <<<"$head"
    [ -n "$code" ] || return 1
    printf '%s\n' "$code"
}

# authreg_state [NSENTER...]: "ok" when the registry there wants credentials and takes
# ours, "down" when nothing answers, else what it answered.
authreg_state() {
    local anon with
    anon=$(authreg_status "" "$@") || { echo down; return 0; }
    with=$(authreg_status "$AUTHREG_BASIC" "$@") || { echo down; return 0; }
    if [ "$anon" = 401 ] && [ "$with" = 200 ]; then
        echo ok
    else
        echo "GET /v2/ answers $anon without and $with with credentials, not 401 and 200"
    fi
}

# authreg_ensure WHERE LOG PIDFILE [NSENTER...]: a registry on $AUTHREG_CONF answers on
# $AUTHREG_ADDR in that namespace, started when nothing answers there.
authreg_ensure() {
    local where=$1 log_file=$2 pid_file=$3 state
    shift 3
    state=$(authreg_state "$@")
    case $state in
        ok) return 0 ;;
        down) ;;
        *) die "the server on $AUTHREG_ADDR ($where) is not the registry with credentials of $AUTHREG_CONF: $state; stop it (pid in $pid_file if this script started it) and run $0 again" ;;
    esac
    authreg_files
    log "starting docker-registry with credentials on $AUTHREG_ADDR ($where, log: $log_file)"
    "${SUDO[@]}" setsid "$@" docker-registry serve "$AUTHREG_CONF" >"$log_file" 2>&1 </dev/null 9>&- &
    echo $! >"$pid_file"
    for _ in $(seq 1 60); do
        state=$(authreg_state "$@")
        [ "$state" != ok ] || return 0
        sleep 0.5
    done
    tail -n 40 "$log_file" >&2 || true
    die "docker-registry with credentials ($where) did not answer on http://$AUTHREG_ADDR/v2/ as it should within 30 s: $state (log: $log_file)"
}

# Digest the registry with credentials serves for private:1 (empty when none).
private_digest() {
    local repo=${PRIVATE1%:*} head
    repo=${repo#"$AUTHREG_ADDR"/}
    head=$(timeout 5 bash -c "$HTTP_HEAD_SCRIPT" _ "$AUTHREG_ADDR" HEAD "/v2/$repo/manifests/${PRIVATE1##*:}" \
        "$AUTHREG_BASIC" 2>/dev/null) || return 0
    [[ $(head -n 1 <<<"$head") == "HTTP/1."?" 200"* ]] || return 0
    sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p' <<<"$head"
}

authreg_ensure "host network" "$AUTHREG_LOG" "$AUTHREG_PID"
authreg_credentials

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

# f: private:1, in the registry with credentials only. Pushed with a private docker config
# (logged in there), then removed from this engine: tests pull it themselves.
if [ -z "$(private_digest)" ]; then
    log "building $PRIVATE1 (pushed to $AUTHREG_ADDR with credentials, then removed here)"
    untag "$PRIVATE1"
    import_image "$PRIVATE1" "$PRIVATE1"
    (umask 077 && mkdir -p "$AUTHREG_DOCKER_CONFIG")
    printf '%s\n' "$AUTHREG_PASSWORD" \
        | quiet dk --config "$AUTHREG_DOCKER_CONFIG" login -u "$AUTHREG_USER" --password-stdin "$AUTHREG_ADDR"
    quiet dk --config "$AUTHREG_DOCKER_CONFIG" push "$PRIVATE1"
    quiet dk rmi "$PRIVATE1"
    [ -n "$(private_digest)" ] || die "$PRIVATE1 is not in the registry with credentials after the push (log: $AUTHREG_LOG)"
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

# ---------------------------------------------------------------- podman 5.8 and 6.1
# Podman 5.8 (Debian sid) and 6.1 (Debian experimental) need glibc 2.38: neither installs
# on bookworm. Each runs from a rootfs made by mmdebstrap, chrooted in a mount namespace of
# its own (`setsid unshare -m`), where the host directory /run/deploytrack-podmanN is the
# chroot's /run, so that its socket is reachable from the host. See the header.

# pc_setup N: the variables of Podman N (5 or 6).
pc_setup() {
    PC_N=$1
    case $1 in
        5) PC_WANT=5.8 PC_SUITE=sid PC_INCLUDE=podman ;;
        6) PC_WANT=6.1 PC_SUITE=experimental PC_INCLUDE=podman/experimental ;;
        *) die "pc_setup: no Podman $1" ;;
    esac
    PC_DIR=/opt/deploytrack-podman$1
    PC_ROOT=$PC_DIR/rootfs
    PC_VERSIONS=$PC_DIR/VERSIONS
    PC_START=$PC_DIR/start
    PC_RUN=/run/deploytrack-podman$1
    PC_SOCK=$PC_RUN/podman/podman.sock
    PC_PIDFILE=/run/deploytrack-podman$1.pid
    PC_LOG=/tmp/deploytrack-podman$1.log
}

# podman_api_version SOCKET: the Podman version that answers the ping on SOCKET (its
# Libpod-Api-Version header); fails when nothing answers.
podman_api_version() {
    local head
    head=$("${SUDO[@]}" curl -sSf -i --max-time 5 --unix-socket "$1" http://d/_ping 2>/dev/null) || return 1
    head=$(tr -d '\r' <<<"$head" | sed -n 's/^[Ll]ibpod-[Aa]pi-[Vv]ersion: *//p')
    [ -n "$head" ] || return 1
    printf '%s\n' "$head"
}

# podman_has_app1 SOCKET: the Podman on SOCKET has app:1 with the registry's digest of it.
podman_has_app1() {
    local json repo=${APP1%:*} want
    want=$(registry_digest "${repo#localhost:5000/}" "${APP1##*:}")
    [ -n "$want" ] || return 1
    json=$("${SUDO[@]}" curl -sSf --max-time 10 --unix-socket "$1" "http://d/v1.41/images/$APP1/json" 2>/dev/null) \
        || return 1
    [[ $json == *"\"$repo@$want\""* ]]
}

# podman_pull_app1 SOCKET WHAT: pull app:1 into the Podman on SOCKET (compat API).
podman_pull_app1() {
    podman_has_app1 "$1" && return 0
    log "pulling $APP1 into $2"
    quiet "${SUDO[@]}" docker -H "unix://$1" pull -q "$APP1"
    podman_has_app1 "$1" || die "$2 has no RepoDigest of the registry's $APP1 after a pull"
}

# curl for the sockets, mmdebstrap for the rootfs, uidmap for rootless Podman.
pc_missing=()
command -v curl >/dev/null 2>&1 || pc_missing+=(curl)
command -v mmdebstrap >/dev/null 2>&1 || pc_missing+=(mmdebstrap)
command -v newuidmap >/dev/null 2>&1 || pc_missing+=(uidmap)
if [ "${#pc_missing[@]}" -gt 0 ]; then
    log "installing ${pc_missing[*]} (apt-get)"
    apt_log=$(mktemp /tmp/deploytrack-apt.XXXXXX)
    pc_install() {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "${pc_missing[@]}" >>"$apt_log" 2>&1
    }
    # The package lists are fresh when the packages above were just installed.
    if ! pc_install && { ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update >>"$apt_log" 2>&1 \
        || ! pc_install; }; then
        tail -n 30 "$apt_log" >&2
        die "apt-get install ${pc_missing[*]} failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
    hash -r
fi

# pc_up: Podman N answers on its socket, as version $PC_WANT.x.
pc_up() {
    local version
    version=$(podman_api_version "$PC_SOCK") || return 1
    [[ $version == "$PC_WANT".* ]] \
        || die "the Podman on $PC_SOCK is $version, not $PC_WANT.x: stop it (pid in $PC_PIDFILE) and run $0 again"
}
pc_pid() { cat "$PC_PIDFILE" 2>/dev/null; }
pc_alive() {
    local pid
    pid=$(pc_pid) && [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = podman ]
}

# pc_build N MIRROR: mmdebstrap the rootfs of Podman N into $PC_DIR.new (in the
# background; its log is $PC_DIR.new.log).
pc_build() {
    pc_setup "$1"
    local mirror=$2
    local -a sources=("deb $mirror sid main")
    [ "$PC_SUITE" = sid ] || sources+=("deb $mirror $PC_SUITE main")
    as_root rm -rf "$PC_DIR.new"
    as_root mkdir -p "$PC_DIR.new"
    # The mirror's sid Release file may be past its Valid-Until.
    as_root mmdebstrap --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' \
        --include="$PC_INCLUDE,runc,conmon,catatonit,netavark,aardvark-dns,nftables,ca-certificates" \
        sid "$PC_DIR.new/rootfs" "${sources[@]}" >"$PC_DIR.new.log" 2>&1 </dev/null 9>&-
}

# pc_finish N STATUS: check the rootfs pc_build made (STATUS: its exit status) and put it
# in place of $PC_DIR. Dies with one line when Debian's suite changed.
pc_finish() {
    pc_setup "$1"
    local status=$2 why version
    if [ "$status" -ne 0 ]; then
        why=$(grep -m 1 '^E: ' "$PC_DIR.new.log" || tail -n 1 "$PC_DIR.new.log")
        as_root rm -rf "$PC_DIR.new"
        case $why in
            *"for 'podman' was not found"* | *"Unable to locate package podman"* | *"Package 'podman' has no installation candidate"*)
                die "Debian $PC_SUITE has no podman any more (mmdebstrap: $why): update the Podman $PC_WANT section of $0 (log: $PC_DIR.new.log)" ;;
            *)
                die "mmdebstrap of Debian $PC_SUITE with $PC_INCLUDE failed: $why (log: $PC_DIR.new.log)" ;;
        esac
    fi
    # shellcheck disable=SC2016 # dpkg-query's format
    version=$(as_root chroot "$PC_DIR.new/rootfs" dpkg-query -W -f '${Version}' podman 2>/dev/null) || version="none"
    if [[ $version != "$PC_WANT".* ]]; then
        as_root rm -rf "$PC_DIR.new" "$PC_DIR.new.log"
        die "Debian $PC_SUITE now has podman $version, not $PC_WANT.x as this script expects: update the Podman $PC_WANT section of $0 (nothing changed in $PC_DIR)"
    fi
    # shellcheck disable=SC2016 # dpkg-query's format
    as_root chroot "$PC_DIR.new/rootfs" dpkg-query -W -f '${Package} ${Version}\n' \
        podman runc conmon golang-github-containers-common netavark 2>/dev/null \
        | as_root tee "$PC_DIR.new/VERSIONS" >/dev/null
    as_root rm -rf "$PC_DIR.old"
    [ ! -e "$PC_DIR" ] || as_root mv "$PC_DIR" "$PC_DIR.old"
    as_root mv "$PC_DIR.new" "$PC_DIR"
    as_root rm -rf "$PC_DIR.old" "$PC_DIR.new.log"
    log "Podman $PC_WANT from Debian $PC_SUITE in $PC_DIR: $(paste -sd, "$PC_VERSIONS" | sed 's/,/, /g')"
}

# as_root_write FILE CONTENT: FILE holds CONTENT (written only when it does not).
as_root_write() {
    [ "$(as_root cat "$1" 2>/dev/null)" = "$2" ] && return 0
    as_root mkdir -p "${1%/*}"
    printf '%s\n' "$2" | as_root tee "$1" >/dev/null
}

# pc_configure: the chroot's configuration and the script that starts its service.
pc_configure() {
    # crun refuses this machine's hybrid cgroups; no systemd, so cgroupfs; no journald.
    # Podman 6's cgroup2 hierarchy (below) has no controllers, all being bound to the
    # host's cgroups v1: no pids.max, so no pids limit (else runc fails on every start).
    local pids=""
    [ "$PC_N" -lt 6 ] || pids=$'\npids_limit = 0'
    as_root_write "$PC_ROOT/etc/containers/containers.conf" '[containers]
netns = "none"'"$pids"'

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"'
    as_root_write "$PC_ROOT/etc/containers/registries.conf.d/deploytrack-test.conf" '[[registry]]
location = "localhost:5000"
insecure = true

[[registry]]
location = "127.0.0.1:5002"
insecure = true'
    # Else "localhost" goes to DNS.
    as_root_write "$PC_ROOT/etc/hosts" '127.0.0.1 localhost'
    local cgroup2=""
    # Podman 6 refuses cgroups v1: it gets a cgroup2 hierarchy in its namespace.
    # shellcheck disable=SC2016 # expanded by the start script
    [ "$PC_N" -lt 6 ] || cgroup2='umount -R "$R/sys/fs/cgroup"
mount -t cgroup2 none "$R/sys/fs/cgroup"'
    as_root_write "$PC_START" "#!/bin/sh
# Started by scripts/test-env.sh as \`setsid unshare -m $PC_START\`: Podman $PC_WANT's API
# service, chrooted in $PC_ROOT, its /run being the host's $PC_RUN.
set -e
R=$PC_ROOT
mount --make-rprivate /
mount --bind \"\$R\" \"\$R\"      # runc needs / to be a mount point
mount -t proc proc \"\$R/proc\"
mount --rbind /sys \"\$R/sys\"
${cgroup2}
mount --rbind /dev \"\$R/dev\"
mount --bind $PC_RUN \"\$R/run\"
echo \$\$ >$PC_PIDFILE
exec chroot \"\$R\" /usr/bin/podman system service --time=0 unix:///run/podman/podman.sock"
    as_root chmod 0755 "$PC_START"
}

# pc_start: start Podman N's service unless it answers.
pc_start() {
    pc_up && return 0
    if pc_alive; then
        for _ in $(seq 1 60); do
            pc_up && return 0
            sleep 0.5
        done
        die "Podman $PC_WANT (pid $(pc_pid)) is running but does not answer on $PC_SOCK: stop it and run $0 again (log: $PC_LOG)"
    fi
    local version
    version=$(sed -n 's/^podman //p' "$PC_VERSIONS" 2>/dev/null)
    [[ $version == "$PC_WANT".* ]] \
        || die "$PC_DIR holds podman ${version:-(unknown)}, not $PC_WANT.x: remove $PC_DIR and run $0 again"
    pc_configure
    as_root mkdir -p "$PC_RUN/podman"
    as_root rm -f "$PC_SOCK" "$PC_PIDFILE"
    log "starting Podman $PC_WANT ($PC_DIR) on $PC_SOCK (log: $PC_LOG)"
    "${SUDO[@]}" setsid unshare -m "$PC_START" >"$PC_LOG" 2>&1 </dev/null 9>&- &
    local start=$!
    for _ in $(seq 1 120); do
        pc_up && return 0
        kill -0 "$start" 2>/dev/null || break
        sleep 0.25
    done
    pc_up && return 0
    tail -n 40 "$PC_LOG" >&2 || true
    die "Podman $PC_WANT did not answer on $PC_SOCK within 30 s: $(grep -m 1 -i 'error' "$PC_LOG" || tail -n 1 "$PC_LOG") (log: $PC_LOG)"
}

# Make the missing rootfs (both at once: each takes about 30 s), then start and fill each.
pc_builds=()
for n in 5 6; do
    pc_setup "$n"
    pc_up || [ -f "$PC_VERSIONS" ] || pc_builds+=("$n")
done
if [ "${#pc_builds[@]}" -gt 0 ]; then
    can_root || die "making the Podman rootfs in /opt needs root or sudo"
    pc_mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null) || true
    [ -n "$pc_mirror" ] || pc_mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null) || true
    pc_mirror=${pc_mirror%%$'\n'*}
    pc_mirror=${pc_mirror%% *}
    [ -n "$pc_mirror" ] || pc_mirror=http://deb.debian.org/debian
    declare -A pc_jobs=()
    for n in "${pc_builds[@]}"; do
        pc_setup "$n"
        log "making Podman $PC_WANT's rootfs from Debian $PC_SUITE ($pc_mirror) in $PC_DIR (mmdebstrap, about 30 s)"
        pc_build "$n" "$pc_mirror" &
        pc_jobs[$n]=$!
    done
    declare -A pc_status=()
    for n in "${pc_builds[@]}"; do
        pc_status[$n]=0
        wait "${pc_jobs[$n]}" || pc_status[$n]=$?
    done
    for n in "${pc_builds[@]}"; do pc_finish "$n" "${pc_status[$n]}"; done
fi
for n in 5 6; do
    pc_setup "$n"
    pc_start
    podman_pull_app1 "$PC_SOCK" "Podman $PC_WANT"
done

# ---------------------------------------------------------------- podman 4.3 rootless
# Bookworm's Podman as an ordinary user (deploytrack-rootless, with a subordinate ID
# range; vfs storage), its service on that user's $XDG_RUNTIME_DIR/podman/podman.sock.
readonly PRL_USER=deploytrack-rootless
readonly PRL_HOME=/var/lib/deploytrack-rootless
readonly PRL_LOG=/tmp/deploytrack-podman-rootless.log
readonly PRL_PID=/tmp/deploytrack-podman-rootless.pid

if ! id -u "$PRL_USER" >/dev/null 2>&1; then
    log "creating the user $PRL_USER (home $PRL_HOME)"
    quiet as_root useradd --create-home --home-dir "$PRL_HOME" --shell /usr/sbin/nologin \
        --user-group "$PRL_USER"
fi
PRL_UID=$(id -u "$PRL_USER")
PRL_GID=$(id -g "$PRL_USER")
readonly PRL_UID PRL_GID
readonly PRL_XDG=/run/user/$PRL_UID
readonly PRL_SOCK=$PRL_XDG/podman/podman.sock

# prl_up: the user's Podman 4.3 answers on its socket, which the user owns.
prl_up() {
    local version
    version=$(podman_api_version "$PRL_SOCK") || return 1
    [[ $version == 4.3.* ]] || die "the Podman on $PRL_SOCK is $version, not 4.3.x"
    [ "$(as_root stat -c %u "$PRL_SOCK")" = "$PRL_UID" ] \
        || die "$PRL_SOCK answers but is not $PRL_USER's: stop that service and run $0 again"
}

# prl_subid FILE: give the user a range of 65536 subordinate IDs in FILE (/etc/subuid or
# /etc/subgid) after every range there, unless the user has one.
prl_subid() {
    local file=$1 start
    as_root grep -q "^$PRL_USER:" "$file" 2>/dev/null && return 0
    # shellcheck disable=SC2016 # awk's fields
    start=$(as_root awk -F: 'BEGIN { m = 100000 } $2 + $3 > m { m = $2 + $3 } END { print m }' "$file" 2>/dev/null) \
        || start=100000
    log "giving $PRL_USER the subordinate IDs $start-$((start + 65535)) in $file"
    if [ "$file" = /etc/subuid ]; then
        quiet as_root usermod --add-subuids "$start-$((start + 65535))" "$PRL_USER"
    else
        quiet as_root usermod --add-subgids "$start-$((start + 65535))" "$PRL_USER"
    fi
}

# prl_write FILE CONTENT: as as_root_write, the file owned by the user.
prl_write() {
    [ "$(as_root cat "$1" 2>/dev/null)" = "$2" ] && return 0
    as_root install -d -o "$PRL_UID" -g "$PRL_GID" "${1%/*}"
    printf '%s\n' "$2" | as_root install -m 0644 -o "$PRL_UID" -g "$PRL_GID" /dev/stdin "$1"
}

if ! prl_up; then
    prl_subid /etc/subuid
    prl_subid /etc/subgid
    cfg=$PRL_HOME/.config/containers
    as_root install -d -o "$PRL_UID" -g "$PRL_GID" "$PRL_HOME/.config" "$cfg"
    prl_write "$cfg/storage.conf" '[storage]
driver = "vfs"'
    prl_write "$cfg/containers.conf" '[containers]
netns = "none"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"'
    prl_write "$cfg/registries.conf.d/deploytrack-test.conf" '[[registry]]
location = "localhost:5000"
insecure = true'
    as_root install -d -m 0700 -o "$PRL_UID" -g "$PRL_GID" "$PRL_XDG" "$PRL_XDG/podman"
    as_root rm -f "$PRL_SOCK"
    log "starting rootless Podman 4.3 as $PRL_USER on $PRL_SOCK (log: $PRL_LOG)"
    "${SUDO[@]}" setsid setpriv --reuid="$PRL_UID" --regid="$PRL_GID" --init-groups \
        env -i "HOME=$PRL_HOME" "USER=$PRL_USER" "LOGNAME=$PRL_USER" "XDG_RUNTIME_DIR=$PRL_XDG" \
        PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        podman system service --time=0 "unix://$PRL_SOCK" >"$PRL_LOG" 2>&1 </dev/null 9>&- &
    prl_start=$!
    for _ in $(seq 1 120); do
        prl_up && break
        kill -0 "$prl_start" 2>/dev/null || break
        sleep 0.25
    done
    if ! prl_up; then
        tail -n 40 "$PRL_LOG" >&2 || true
        die "rootless Podman did not answer on $PRL_SOCK within 30 s: $(grep -m 1 -i 'error' "$PRL_LOG" || tail -n 1 "$PRL_LOG") (log: $PRL_LOG)"
    fi
    info=$("${SUDO[@]}" curl -sSf --max-time 30 --unix-socket "$PRL_SOCK" http://d/v4.0.0/libpod/info 2>&1) \
        || die "GET /libpod/info on $PRL_SOCK failed: $info"
    [[ $info == *'"rootless":true'* ]] || die "the Podman on $PRL_SOCK does not say rootless: true (log: $PRL_LOG)"
    [[ $info == *'"graphDriverName":"vfs"'* ]] || die "the Podman on $PRL_SOCK does not use vfs storage (log: $PRL_LOG)"
    # Rootless Podman re-executes itself in a user namespace: the service is not $!, but
    # the process that listens on the socket.
    prl_pid=$(as_root ss -xlpn | grep -F " $PRL_SOCK " | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1) || prl_pid=""
    echo "${prl_pid:-$prl_start}" >"$PRL_PID"
fi
podman_pull_app1 "$PRL_SOCK" "rootless Podman 4.3 ($PRL_USER)"

# ---------------------------------------------------------------- docker28: binaries
# Debian sid's Docker 28.5 does not install on bookworm, but its binaries run here when
# unpacked (sid's runc needs glibc 2.38, so bookworm's runc stands in).

# d28_runs PACKAGE FILE ARGS...: run FILE ARGS (a binary of PACKAGE, e.g. "sid's
# containerd") and print its output; when it is missing or does not run, print why in
# one line and fail.
d28_runs() {
    local pkg=$1 file=$2 out
    shift 2
    if [ ! -e "$file" ]; then
        printf "%s no longer has %s\n" "$pkg" "$file"
        return 1
    fi
    if ! out=$(timeout 30 "$file" "$@" 2>&1); then
        printf "%s does not run here: \`%s %s\` says: %s\n" \
            "$pkg" "${file##*/}" "$*" "$(grep -m 1 . <<<"$out" || echo "(no output)")"
        return 1
    fi
    printf '%s\n' "$out"
}

# d28_check ROOT: the unpacked tree in ROOT runs here and its dockerd is 28 or 29.
# On failure prints one line saying what is wrong.
d28_check() {
    local root=$1 out major check
    local -a args
    out=$(d28_runs "sid's docker.io" "$root/usr/sbin/dockerd" --version) || { printf '%s\n' "$out"; return 1; }
    major=$(sed -n 's/^Docker version \([0-9]*\)\..*/\1/p' <<<"$out")
    if [ "$major" != 28 ] && [ "$major" != 29 ]; then
        printf "sid's docker.io now has %s, not major version 28 or 29 as this script expects\n" \
            "$(grep -m 1 . <<<"$out")"
        return 1
    fi
    for check in "sid containerd path/containerd --version" \
        "sid containerd path/containerd-shim-runc-v2 -v" \
        "sid docker.io path/docker-proxy --version" \
        "sid tini-static path/docker-init --version" \
        "bookworm runc path/runc --version" \
        "sid docker-compose usr/libexec/docker/cli-plugins/docker-compose version" \
        "sid docker-buildx usr/libexec/docker/cli-plugins/docker-buildx version"; do
        read -r -a args <<<"$check"
        out=$(d28_runs "${args[0]}'s ${args[1]}" "$root/${args[2]}" "${args[@]:3}") \
            || { printf '%s\n' "$out"; return 1; }
    done
}

# d28_install: download sid's newest packages, unpack them into $D28.new, check them,
# then put the tree in place of $D28 (a running dockerd keeps its old files).
d28_install() {
    local apt mirror pkg version why line
    local -a o versions=()
    can_root || die "installing Docker 28 from Debian sid into $D28 needs root or sudo."
    apt=$(mktemp -d /var/tmp/deploytrack-apt-sid.XXXXXX)
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    : >"$apt/status"
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null) || true
    [ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null) || true
    mirror=${mirror%%$'\n'*}
    mirror=${mirror%% *}
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    echo "deb $mirror sid main" >"$apt/sources.list"
    # A private sources list, lists, cache and an empty dpkg status: only sid's
    # packages are candidates, and the system's apt state is left alone.
    o=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=-
       -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
       -o "Dir::State::status=$apt/status" -o APT::Sandbox::User=root)
    log "downloading ${D28_PACKAGES[*]} from Debian sid ($mirror)"
    if ! as_root apt-get "${o[@]}" update >"$apt/log" 2>&1; then
        tail -n 20 "$apt/log" >&2
        die "apt-get update of Debian sid ($mirror) failed (log: $apt/log)"
    fi
    for pkg in "${D28_PACKAGES[@]}"; do
        version=$(apt-cache "${o[@]}" show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p') \
            || version=""
        version=${version%%$'\n'*}
        if [ -z "$version" ]; then
            as_root rm -rf "$apt"
            die "package $pkg is gone from Debian sid ($mirror): update the Docker 28 section of $0"
        fi
        versions+=("$pkg=$version")
    done
    if ! (cd "$apt/cache/archives" && as_root apt-get "${o[@]}" download "${versions[@]}") >>"$apt/log" 2>&1; then
        tail -n 20 "$apt/log" >&2
        die "apt-get download ${versions[*]} from Debian sid failed (log: $apt/log)"
    fi
    as_root rm -rf "$D28.new"
    as_root mkdir -p "$D28.new/path"
    for pkg in "$apt"/cache/archives/*.deb; do
        quiet as_root dpkg-deb -x "$pkg" "$D28.new"
    done
    as_root ln -s ../usr/bin/containerd ../usr/bin/containerd-shim-runc-v2 ../usr/bin/docker-init \
        ../usr/sbin/docker-proxy /usr/sbin/runc "$D28.new/path/"
    if ! why=$(d28_check "$D28.new"); then
        as_root rm -rf "$D28.new" "$apt"
        die "$why (nothing changed in $D28)"
    fi
    {
        for line in "${versions[@]}"; do printf '%s %s\n' "${line%%=*}" "${line#*=}"; done
        printf "runc %s (bookworm's /usr/sbin/runc)\n" "$(dpkg-query -W -f '${Version}' runc 2>/dev/null || echo '?')"
    } | as_root tee "$D28.new/VERSIONS" >/dev/null
    as_root rm -rf "$D28.old"
    [ ! -e "$D28" ] || as_root mv "$D28" "$D28.old"
    as_root mv "$D28.new" "$D28"
    as_root rm -rf "$D28.old" "$apt"
    log "Docker 28 from Debian sid in $D28: $(paste -sd, "$D28_VERSIONS" | sed 's/,/, /g')"
}

if [ ! -f "$D28_VERSIONS" ]; then
    d28_install
elif ! why=$(d28_check "$D28"); then
    log "$D28 fails its check ($why): downloading again"
    d28_install
fi

# `docker compose` (v2) and `docker buildx` for every user's docker client.
for plugin in docker-compose docker-buildx; do
    target=$D28/usr/libexec/docker/cli-plugins/$plugin
    if [ "$(readlink "$CLI_PLUGINS/$plugin" 2>/dev/null)" != "$target" ]; then
        log "linking $CLI_PLUGINS/$plugin -> $target"
        as_root mkdir -p "$CLI_PLUGINS"
        as_root ln -sfn "$target" "$CLI_PLUGINS/$plugin"
    fi
done
for sub in compose buildx; do
    out=$(docker "$sub" version 2>&1) \
        || die "\`docker $sub version\` fails: $(grep -m 1 . <<<"$out" || echo "(no output)")"
done

# ---------------------------------------------------------------- docker28: namespace
# The engine gets its own network namespace, so that its bridges, firewall rules and a
# swarm never meet the classic engine's. nsenter, not `ip netns exec`: the engine needs
# the host's /sys and cgroup mounts, which `ip netns exec` replaces.
in_netns() { as_root nsenter --net="$D28_NETNS_PATH" "$@"; }
if ! in_netns true 2>/dev/null; then
    log "creating network namespace $D28_NETNS"
    [ ! -e "$D28_NETNS_PATH" ] || as_root ip netns delete "$D28_NETNS" 2>/dev/null \
        || as_root rm -f "$D28_NETNS_PATH"
    quiet as_root ip netns add "$D28_NETNS"
fi
quiet in_netns ip link set lo up

# A second registry process in the namespace, on the same config and storage: the engine
# there pulls and pushes the localhost:5000 that the host's registry serves.
ns_registry_up() {
    local head
    head=$(in_netns timeout 5 bash -c "$HTTP_HEAD_SCRIPT" _ "$REGISTRY_ADDR" GET /v2/ 2>/dev/null) || return 1
    [[ $head == "HTTP/1."?" 200"* ]]
}
if ! ns_registry_up; then
    [ -f "$REGISTRY_CONF" ] || die "$REGISTRY_CONF is missing (the host's registry runs without it?): stop that registry and run $0 again"
    log "starting docker-registry on $REGISTRY_ADDR in namespace $D28_NETNS (log: $D28_REGISTRY_LOG)"
    "${SUDO[@]}" setsid nsenter --net="$D28_NETNS_PATH" docker-registry serve "$REGISTRY_CONF" \
        >"$D28_REGISTRY_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$D28_REGISTRY_PID"
    for _ in $(seq 1 60); do
        ns_registry_up && break
        sleep 0.5
    done
    if ! ns_registry_up; then
        tail -n 40 "$D28_REGISTRY_LOG" >&2 || true
        die "docker-registry in namespace $D28_NETNS did not answer on http://$REGISTRY_ADDR/v2/ within 30 s (log: $D28_REGISTRY_LOG)"
    fi
fi
# The same for the registry with credentials: 127.0.0.1:5002 there is a second process on
# its config and storage.
authreg_ensure "namespace $D28_NETNS" "$D28_AUTHREG_LOG" "$D28_AUTHREG_PID" nsenter --net="$D28_NETNS_PATH"

# ---------------------------------------------------------------- docker28: dockerd
DOCKER_CLASSIC=("${DOCKER[@]}")
DOCKER28=(docker -H "$D28_HOST")
if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -gt 0 ] && [ ! -w "${D28_HOST#unix://}" ]; then
    DOCKER28=("${SUDO[@]}" docker -H "$D28_HOST")
fi
d28_up() { timeout 10 "${DOCKER28[@]}" version --format '{{.Server.Version}}' >/dev/null 2>&1; }
d28_pid() { cat "$D28_PIDFILE" 2>/dev/null; }
# a dockerd of ours, alive (maybe still starting)
d28_alive() {
    local pid
    pid=$(d28_pid) && [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}
d28_wait() {
    for _ in $(seq 1 120); do
        d28_up && return 0
        d28_alive || break
        sleep 0.5
    done
    d28_up
}

if ! d28_up; then
    if ! d28_alive || ! d28_wait; then
        d28_alive && die "dockerd 28 (pid $(d28_pid)) is running but does not answer on $D28_HOST: stop it and run $0 again (log: $D28_LOG)"
        # dockerd uses a containerd on this socket instead of starting sid's own.
        [ ! -S /run/containerd/containerd.sock ] \
            || die "a system containerd listens on /run/containerd/containerd.sock: dockerd 28 would use it instead of sid's containerd; stop it first"
        want='{"features": {"containerd-snapshotter": true}}'
        if [ "$(cat "$D28_CONF" 2>/dev/null)" != "$want" ]; then
            as_root mkdir -p "${D28_CONF%/*}"
            printf '%s\n' "$want" | as_root tee "$D28_CONF" >/dev/null
        fi
        as_root mkdir -p "$D28_DATA" "$D28_RUN"
        as_root rm -f "$D28_PIDFILE"
        log "starting dockerd 28 on $D28_HOST in namespace $D28_NETNS (log: $D28_LOG)"
        "${SUDO[@]}" env "PATH=$D28_PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
            setsid nsenter --net="$D28_NETNS_PATH" "$D28/usr/sbin/dockerd" \
            --config-file "$D28_CONF" --data-root "$D28_DATA" --exec-root "$D28_RUN/x" \
            --pidfile "$D28_PIDFILE" -H "$D28_HOST" >"$D28_LOG" 2>&1 </dev/null 9>&- &
        d28_start=$!
        for _ in $(seq 1 120); do
            d28_up && break
            kill -0 "$d28_start" 2>/dev/null || break
            sleep 0.5
        done
        if ! d28_up; then
            tail -n 40 "$D28_LOG" >&2 || true
            die "dockerd 28 did not answer \`docker -H $D28_HOST version\` within 60 s (log: $D28_LOG)"
        fi
    fi
fi
# The engine must be the one in the namespace (not one left from a namespace since deleted).
pid=$(d28_pid) || die "dockerd 28 answers on $D28_HOST but $D28_PIDFILE is missing: stop that dockerd and run $0 again"
if [ "$(as_root readlink "/proc/$pid/ns/net")" != "net:[$(as_root stat -L -c %i "$D28_NETNS_PATH")]" ]; then
    die "dockerd 28 (pid $pid) on $D28_HOST is not in network namespace $D28_NETNS: stop it and run $0 again"
fi
status=$("${DOCKER28[@]}" info --format '{{json .DriverStatus}}' 2>&1) || status="(docker info failed: $status)"
[[ $status == *io.containerd.snapshotter.v1* ]] \
    || die "dockerd 28 on $D28_HOST does not use the containerd image store (DriverStatus: $status): check $D28_CONF"

# ---------------------------------------------------------------- docker28: images
# The image helpers above (dk, image_ok, import_image, platform_of...) now talk to
# the 28 engine.
DOCKER=("${DOCKER28[@]}")

# The same app:1, mirror:1 and app:2 (same digests) as the classic engine's.
for ref in "$APP1" "$MIRROR1" "$APP2"; do
    if ! image_ok "$ref" "$ref"; then
        log "docker28: pulling $ref"
        quiet dk pull -q "$ref"
        image_ok "$ref" "$ref" || die "docker28: $ref lacks the registry's RepoDigest after a pull: $(repo_digests "$ref")"
    fi
done

# local:1, never pushed (on this store it has RepoDigests all the same).
if ! dk image inspect "$LOCAL1" >/dev/null 2>&1; then
    log "docker28: importing $LOCAL1"
    import_image "$LOCAL1" "$LOCAL1"
fi

# multi:1, a real OCI index built for three platforms from a busybox rootfs (FROM
# scratch + COPY: no emulation, no internet). The default `docker` builder of the 28
# engine can push a multi-platform image because of the containerd store. Plain --push
# would make a Docker manifest list: oci-mediatypes=true makes it an OCI index. No
# provenance or SBOM: the index holds exactly the three platform manifests.
multi_ok() {
    local repo=${MULTI1%:*}
    image_ok "$MULTI1" "$MULTI1" \
        && [ "$(registry_media_type "${repo#localhost:5000/}" "${MULTI1##*:}")" = application/vnd.oci.image.index.v1+json ]
}
if ! multi_ok; then
    log "docker28: building $MULTI1 for ${MULTI_PLATFORMS[*]}"
    ensure_work
    ctx=$(mktemp -d "$WORK/multi.XXXXXX")
    mkdir -p "$ctx/root/bin" "$ctx/root/etc" "$ctx/root/tmp"
    cp /bin/busybox "$ctx/root/bin/busybox"
    for link in sleep sh true; do ln -s busybox "$ctx/root/bin/$link"; done
    printf '%s\n' "$MULTI1" >"$ctx/root/etc/deploytrack-test-version"
    printf '%s\n' 'FROM scratch' 'COPY root/ /' 'CMD ["/bin/sleep","3600"]' >"$ctx/Dockerfile"
    platforms=$(IFS=,; echo "${MULTI_PLATFORMS[*]}")
    quiet dk buildx build --builder default --platform "$platforms" --provenance=false --sbom=false \
        -t "$MULTI1" --output type=image,push=true,oci-mediatypes=true "$ctx"
    multi_ok || die "docker28: $MULTI1 is not an OCI index in the registry matching the local image after the buildx push (RepoDigests: $(repo_digests "$MULTI1"))"
    index=$(dk buildx imagetools inspect "$MULTI1" 2>&1) \
        || die "docker28: buildx imagetools inspect $MULTI1 failed: $(grep -m 1 . <<<"$index")"
    for platform in "${MULTI_PLATFORMS[@]}"; do
        grep -q "^ *Platform: *$platform\$" <<<"$index" \
            || die "docker28: the index of $MULTI1 has no $platform manifest: $(paste -sd ' ' <<<"$index")"
    done
    quiet dk run --rm --network none --platform linux/arm/v7 "$MULTI1" /bin/true
fi

# ---------------------------------------------------------------- systemd image
# Debian 12 with systemd, where the packaging tests install the .deb (built when missing).
quiet as_root "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/test-systemd-image.sh"

# ---------------------------------------------------------------- summary
# summary LABEL REF...: one line per image (platform and RepoDigests) on the engine $DOCKER.
summary() {
    local label=$1 ref
    shift
    for ref in "$@"; do
        printf 'test-env: %s%s %s RepoDigests=%s\n' "$label" "$ref" "$(platform_of "$ref")" \
            "$(dk image inspect --format '{{json .RepoDigests}}' "$ref")" >&2
    done
}
images=("$APP1" "$MIRROR1" "$APP2" "$LOCAL1")
[ "$ARM_OK" -eq 0 ] || images+=("$ARM1")
DOCKER=("${DOCKER_CLASSIC[@]}")
summary "" "${images[@]}"
DOCKER=("${DOCKER28[@]}")
summary "docker28: " "$APP1" "$MIRROR1" "$APP2" "$LOCAL1" "$MULTI1"
