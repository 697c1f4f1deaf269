//! Integration tests that run once, on Docker 20.10: configuration (no engine needed),
//! Podman's Docker-compatible API, the agent as it is packaged (the image, Compose, Swarm
//! and the .deb under systemd), and the ARM builds under emulation (arm.rs). The agents of
//! the packaging and ARM tests share the host's network to reach the test's receiver on
//! loopback, which the other engine's network namespace cannot.
//!
//! A test target of its own, apart from tests/it: the packaging and ARM tests install
//! release and cross-built artifacts and run emulated engines, heavy work that would
//! otherwise share the test threads (and the two cores) with the engine tests.

use deploytrack_test_support::Engine;

mod arm;
mod config;
mod packaging;
mod podman;

/// The engine of the tests that need one: Debian's Docker 20.10, the default socket.
const ENGINE: Engine = Engine::Classic;
