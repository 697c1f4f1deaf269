#!/usr/bin/env bash
# Builds the Debian package target/debian/deploytrack_<version>-1_<arch>.deb and checks
# that it holds the binary, the systemd unit, the conffile and the man page.
#
#   packaging/build-deb.sh
#
# Needs: cargo, dpkg-deb. Installs cargo-deb (cargo install cargo-deb --locked) if missing.
set -euo pipefail

cd "$(dirname "$0")/.."

die() {
    echo "build-deb: $*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
command -v dpkg-deb >/dev/null || die "dpkg-deb is not installed: apt-get install dpkg"
grep -q '^\[package\.metadata\.deb\]' Cargo.toml ||
    die "Cargo.toml has no [package.metadata.deb] table"

# 1. The release binary. cargo-deb maps target/release/ to the real target dir, and so do we.
cargo build --release --locked
bin="${CARGO_TARGET_DIR:-target}/release/deploytrack"
[ -x "$bin" ] || die "$bin was not built"

# 2. Man page and shell completions, generated from the CLI itself. The asset paths in
#    Cargo.toml are relative to the repository, so these go to ./target whatever
#    CARGO_TARGET_DIR says.
mkdir -p target/man target/completions
"$bin" man >target/man/deploytrack.1
"$bin" completions bash >target/completions/deploytrack.bash
"$bin" completions zsh >target/completions/_deploytrack
"$bin" completions fish >target/completions/deploytrack.fish
for f in target/man/deploytrack.1 target/completions/deploytrack.bash \
    target/completions/_deploytrack target/completions/deploytrack.fish; do
    [ -s "$f" ] || die "$f is empty: '$bin' did not generate it"
done

# 3. The package, from the files built above.
if ! command -v cargo-deb >/dev/null; then
    echo "build-deb: installing cargo-deb" >&2
    cargo install cargo-deb --locked
fi
mkdir -p target/debian
# cargo-deb prints the path of the package it wrote as the last line on stdout.
deb="$(cargo deb --no-build --output target/debian/ | tail -n 1)"
[ -f "$deb" ] || die "cargo deb did not report the package it built (got: '$deb')"

# 4. Check what is inside.
echo "== $deb"
dpkg-deb --info "$deb"
contents="$(dpkg-deb --contents "$deb")"
echo "$contents"

missing=0
need() { # need DESCRIPTION REGEX...: one of the paths must be in the package
    local what="$1" re
    shift
    for re in "$@"; do
        grep -Eq " \./${re}\$" <<<"$contents" && return 0
    done
    echo "build-deb: MISSING $what (expected $*)" >&2
    missing=1
}
need "the binary" 'usr/bin/deploytrack'
need "the systemd unit" 'usr/lib/systemd/system/deploytrack\.service' 'lib/systemd/system/deploytrack\.service'
need "the config file" 'etc/deploytrack/config\.toml'
need "the man page" 'usr/share/man/man1/deploytrack\.1\.gz'
need "the bash completion" 'usr/share/bash-completion/completions/deploytrack'

grep -qx '/etc/deploytrack/config.toml' <(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles 2>/dev/null) || {
    echo "build-deb: MISSING /etc/deploytrack/config.toml in conffiles (local edits would be overwritten)" >&2
    missing=1
}
postinst="$(dpkg-deb --info "$deb" postinst 2>/dev/null || true)"
grep -q 'adduser --system' <<<"$postinst" || {
    echo "build-deb: MISSING the system user creation in postinst" >&2
    missing=1
}
grep -q 'deb-systemd-helper' <<<"$postinst" || {
    echo "build-deb: MISSING the systemd fragments in postinst (#DEBHELPER# not expanded)" >&2
    missing=1
}

[ "$missing" = 0 ] || die "$deb is incomplete, see above"
echo "build-deb: OK $deb"
