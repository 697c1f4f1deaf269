//! Integration tests that run once, on Docker 20.10: configuration (no engine needed),
//! Podman's Docker-compatible API, and the agent as it is packaged (the image, Compose,
//! Swarm and the .deb under systemd, whose agents share the host's network to reach the
//! test's receiver on loopback, which the other engine's network namespace cannot).

#[path = "../support/mod.rs"]
mod support;

#[path = "../it/common/mod.rs"]
mod common;

mod config;
mod packaging;
mod podman;
