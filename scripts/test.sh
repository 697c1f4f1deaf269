#!/usr/bin/env bash
# The test command: every test, against both Docker engines.
#
#   1. scripts/test-env.sh installs and starts what the tests use (Docker 20.10 with the
#      classic image store, Docker 28.5 with the containerd image store, the loopback
#      registry, Podman) and builds the test images;
#   2. scripts/test-artifacts.sh builds what the packaging tests install: the release
#      binary, the .deb and the image (the tests would build them too, but in the middle of
#      the suite, competing with it for the cores);
#   3. `cargo test`: the unit tests and the whole integration suite on the classic engine;
#   4. the engine-facing integration tests again on the containerd engine
#      (DEPLOYTRACK_TEST_ENGINE=containerd). Podman's tests and the configuration tests, which
#      use no Docker engine, run once, and so do the packaging tests, which need the classic
#      engine (their agents share the host's network).
#
# Arguments go to both `cargo test` runs, e.g. `scripts/test.sh --locked`.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/test-env.sh
echo "== the release binary, the .deb and the image" >&2
scripts/test-artifacts.sh >/dev/null
echo "== the classic image store (Docker 20.10)" >&2
cargo test "$@"
echo "== the containerd image store (Docker 28.5)" >&2
DEPLOYTRACK_TEST_ENGINE=containerd cargo test "$@" --test it -- --skip podman:: --skip config:: --skip packaging::
