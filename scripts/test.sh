#!/usr/bin/env bash
# The test command: every test, against both Docker engines.
#
#   1. scripts/test-env.sh installs and starts what the tests use (Docker 20.10 with the
#      classic image store, Docker 28.5 with the containerd image store, the loopback
#      registry, Podman) and builds the test images;
#   2. `cargo test`: the unit tests and the whole integration suite on the classic engine;
#   3. the engine-facing integration tests again on the containerd engine
#      (DEPLOYTRACK_TEST_ENGINE=containerd). Podman's tests and the configuration tests, which
#      use no Docker engine, run once.
#
# Arguments go to both `cargo test` runs, e.g. `scripts/test.sh --locked`.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/test-env.sh
echo "== the classic image store (Docker 20.10)" >&2
cargo test "$@"
echo "== the containerd image store (Docker 28.5)" >&2
DEPLOYTRACK_TEST_ENGINE=containerd cargo test "$@" --test it -- --skip podman:: --skip config::
