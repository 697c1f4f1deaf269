//! Integration tests that run once, on Docker 20.10: configuration (no engine needed),
//! Podman's Docker-compatible API, the agent as it is packaged (the image, Compose, Swarm
//! and the .deb under systemd), and the ARM builds under emulation (arm.rs). The agents of
//! the packaging and ARM tests share the host's network to reach the test's receiver on
//! loopback, which the other engine's network namespace cannot.

#[path = "../support/mod.rs"]
mod support;

#[path = "../it/common/mod.rs"]
mod common;

mod arm;
mod config;
mod packaging;
mod podman;
